"""Study commands: `epmvg demo`, `epmvg experiment`, `epmvg ablations`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer

from pipeline.cli.common import (
    CACHE_ROOT,
    DATA_ROOT,
    DEVICE,
    found_store,
    setup_logging,
)
from pipeline.cli.errors import one_line_errors
from pipeline.cli.options import resolve_device


def register(app: typer.Typer) -> None:
    for name, command in (("demo", demo), ("experiment", experiment), ("ablations", ablations)):
        app.command(name)(command)


@one_line_errors
def demo(
    out: Path = typer.Option(Path("demo"), help="folder for data, cache, run and report"),
    quick: bool = typer.Option(False, help="a seconds-long smoke version (tests)"),
) -> None:
    """Offline end to end on the synthetic shapes dataset: data, cache, train, eval, report."""
    from pipeline.studies.demo import DemoConfig, run_demo

    setup_logging()
    summary = run_demo(DemoConfig.quick(out) if quick else DemoConfig(out=out))
    typer.echo(f"report: {out / 'report.md'} ({summary['wall_seconds']} s)")


@one_line_errors
def experiment(
    study: str = typer.Argument("distillation", help="distillation | box-loss | students"),
    out: Path = typer.Option(Path("experiment"), help="data, teacher, cache, one run per variant and seed"),
    seeds: int = typer.Option(3, help="seeds 0 .. N-1 for every variant"),
    epochs: int = typer.Option(30, help="epochs of each run (x0.1 at 85%)"),
    quick: bool = typer.Option(False, help="test-sized: the demo's QUICK data, 2 seeds"),
) -> None:
    """Variants x seeds x training sizes on the demo's data; mean ± std table (results.md) and plot.

    `distillation`: CD (both terms), image term only, text term only, no CD, on all and on 25% of the
    train images. `box-loss`: smooth-L1 β=1, smooth-L1 β=0.1, L1. `students`: TransVG vs LGR-NET, each
    with and without CD. `exact-views`: CD toward each augmented view's own teacher embedding (an
    exact-view cache, K = 4) vs toward the whole image's, on the same views, and no CD.
    `coord-embedding`: LGR-NET's coordinate embedding on/off, with spatial words allowed and
    forbidden (Table VI on shapes). An interrupted experiment resumes.
    """
    from pipeline.studies.experiment import ExperimentConfig, run_experiment

    setup_logging()
    if quick:
        config = ExperimentConfig.quick(study, out)
    else:
        demo = dataclasses.replace(
            ExperimentConfig().demo, out=out, epochs=epochs, lr_drop=max(1, round(0.85 * epochs))
        )
        config = ExperimentConfig(study=study, out=out, seeds=tuple(range(seeds)), demo=demo)
    results = run_experiment(config)
    typer.echo(f"results: {results}")


@one_line_errors
def ablations(
    dataset: str = typer.Argument("shapes"),
    data_root: Path = DATA_ROOT,
    out: Path = typer.Option(Path("ablations"), help="results.md, results.csv and one run per variant"),
    cache: Path | None = typer.Option(
        None,
        help="the Phase-1 store all variants share (default: the one complete store under "
        "CACHE_ROOT/<dataset> built for these data)",
    ),
    cache_root: Path = CACHE_ROOT,
    student: str | None = typer.Option(
        None, help="preset; its architecture picks the grid (default transvg-r50, tiny with --quick)"
    ),
    epochs: int | None = typer.Option(None),
    batch_size: int = typer.Option(64),
    device: str = DEVICE,
    quick: bool = typer.Option(False, help="CPU-sized grid: tiny student, 32 samples, 1 epoch"),
    unfrozen_teacher: bool = typer.Option(
        False,
        help="add EpmVG's online distillation from a trainable teacher: the demo's random teacher when "
        "the cache is built here, else --teacher with --pretrained FILE",
    ),
    teacher: str = typer.Option("ViT-B-16", help="--unfrozen-teacher with --cache: open_clip model or JSON"),
    pretrained: str = typer.Option("openai", help="--unfrozen-teacher with --cache: checkpoint file or none"),
    allow_random_teacher: bool = typer.Option(False),
) -> None:
    """EpmVG's ablation grid (cosine vs L1, image/text only, lambda sweep, no distillation) on one cache;
    with an LGR-NET student (`--student lgrnet-tiny`), LGR-NET's grid (pipeline/studies/ablations.py).

    The shortcut for the shapes data and QUICK runs; on a real dataset, `epmvg train DATASET [--cache
    STORE] --ablations ...` runs the same grid with every training option (DETR weights, schedule, DDP).
    Without --cache the store is the one under CACHE_ROOT/<dataset> built for these data; on shapes
    only, when none is, a demo store of a RANDOM-weight tiny teacher is built in OUT/cache.
    """
    import dataclasses

    from pipeline.engine.config import TrainConfig
    from pipeline.studies.ablations import run_ablations
    from pipeline.studies.demo import demo_teacher, ensure_shapes, quick_ablation_base
    from pipeline.targets.lookup import NoMatchingStoreError
    from pipeline.teacher.cache_job import CacheJobConfig, build_cache

    setup_logging()
    device = resolve_device(device)
    if dataset == "shapes" and not (data_root / "splits" / "shapes").is_dir():
        data_root = ensure_shapes(out / "data", images=60 if quick else 600, seed=0)
    try:
        cache = cache or found_store(dataset, data_root, cache_root)
    except NoMatchingStoreError:
        if dataset != "shapes":
            raise
        typer.secho(
            f"note: no store under {cache_root / dataset} is built for these shapes data: building one with "
            "a RANDOM-weight tiny teacher (demo only; `make cache DATASET=shapes` for a real one)",
            fg="yellow",
        )
        here = demo_teacher()  # the unfrozen-teacher variant then trains this teacher online
        teacher, pretrained, allow_random_teacher = here.model, here.pretrained, here.allow_random
        cache = build_cache(
            CacheJobConfig(
                dataset=dataset,
                data_root=data_root,
                teacher=here,
                out=out / "cache",
                decode_workers=0,
                skip_missing=True,
            )
        )
    if quick:
        base = quick_ablation_base(dataset, data_root, cache, out, student=student or "tiny")
    else:
        base = TrainConfig(
            dataset=dataset,
            data_root=data_root,
            out=out,
            student=student or "transvg-r50",
            cache=cache,
            epochs=epochs,
            batch_size=batch_size,
            device=device,
        )
    if unfrozen_teacher:  # the teacher the online variant trains (the cached variants read the store)
        base = dataclasses.replace(
            base,
            teacher_model=teacher,
            teacher_pretrained=pretrained,
            allow_random_teacher=allow_random_teacher,
        )
    typer.echo(f"results: {run_ablations(base, unfrozen_teacher=unfrozen_teacher)}")
