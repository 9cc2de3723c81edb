"""The `epmvg` command line: data · cache · teacher · train · eval · predict · demo · ablations.

Every command is a thin layer over a library function; `cache_clip.py` and `train_student.py` are
thinner layers over these.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import typer

import storage
from pipeline.cli_errors import one_line_errors
from pipeline.cli_options import (
    AUTO_DEVICE,
    bounded_workers,
    check_out_dir,
    check_out_file,
    resolve_device,
    usable_cpus,
)
from pipeline.data.cli import app as data_app

app = typer.Typer(no_args_is_help=True, help="Visual grounding with cross-modal distillation (EpmVG).")
cache_app = typer.Typer(no_args_is_help=True, help="Phase 1: the frozen-CLIP teacher feature cache.")
teacher_app = typer.Typer(
    no_args_is_help=True, help="Train a tiny CLIP teacher on a dataset's own pairs (no CLIP weights needed)."
)
app.add_typer(data_app, name="data", help="Dataset readers, checks and the synthetic shapes dataset.")
app.add_typer(cache_app, name="cache")
app.add_typer(teacher_app, name="teacher")


def _default_workers(cap: int = 4) -> int:
    """Up to `cap` loader processes, but no more than the CPUs this process may use (torch warns past it)."""
    return min(cap, usable_cpus())


DEVICE = typer.Option(AUTO_DEVICE, help="auto (CUDA when a GPU is visible, else CPU), cpu, cuda or cuda:N")


DATA_ROOT = typer.Option(Path("../shared/data"), "--data-root", help="folder with splits/ and images/")
CACHE_ROOT = typer.Option(
    Path("cache"), "--cache-root", help="without --cache: look for the store in CACHE_ROOT/<dataset>"
)


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


@cache_app.command("build")
@one_line_errors
def cache_build(
    dataset: str = typer.Argument(..., help="refcoco, refcoco+, refcocog, ..., shapes, or a .jsonl file"),
    data_root: Path = DATA_ROOT,
    out: Path | None = typer.Option(None, help="store folder [default: cache/<dataset>/<fingerprint>]"),
    teacher: str = typer.Option("ViT-B-16", help="open_clip model name or model-config JSON path"),
    pretrained: str = typer.Option("openai", help="open_clip tag, local checkpoint file, or 'none'"),
    allow_random_teacher: bool = typer.Option(False, help="allow --pretrained none (tests only)"),
    teacher_crop: str = typer.Option("letterbox", help="letterbox (whole image) or center (CLIP's crop)"),
    device: str = DEVICE,
    dtype: str = typer.Option("float16", help="float16 or float32"),
    batch_size: int = typer.Option(256),
    decode_workers: int = typer.Option(
        _default_workers(), help="image-decoding processes per teacher (default: up to 4)"
    ),
    workers: int = typer.Option(1, help=">1: run shards on that many dask workers (LocalCluster)"),
    scheduler: str | None = typer.Option(None, help="address of an existing dask scheduler"),
    skip_missing: bool = typer.Option(False, help="drop (and count) samples whose image is missing"),
    force: bool = typer.Option(False, help="wipe a store with another fingerprint and start over"),
    image_shard_rows: int = typer.Option(2048),
    text_shard_rows: int = typer.Option(8192),
    views: int = typer.Option(0, help="exact-view mode: embed K seeded train-augmentation views per record"),
    view_student: str = typer.Option(
        "transvg-r50", help="--views: the student preset whose transform is drawn"
    ),
    view_image_size: int | None = typer.Option(None, help="--views: the student's image size, if overridden"),
    view_seed: int = typer.Option(0, help="--views: seed of the drawn views"),
) -> None:
    """Embed every image and expression of DATASET with the frozen teacher into a Zarr store."""
    from pipeline.cache_job import CacheJobConfig, build_cache
    from pipeline.teacher import TeacherConfig
    from pipeline.views import ViewSpec, student_transform

    _setup_logging()
    device = resolve_device(device)
    decode_workers = bounded_workers(decode_workers, "--decode-workers")
    workers = max(1, bounded_workers(workers, "--workers"))
    if out is not None:
        check_out_dir(out)
    view_spec = (
        ViewSpec(views, student_transform(view_student, view_image_size), view_seed) if views else None
    )
    config = CacheJobConfig(
        dataset=dataset,
        data_root=data_root,
        teacher=TeacherConfig(
            model=teacher,
            pretrained=pretrained,
            allow_random=allow_random_teacher,
            crop=teacher_crop,
            device=device,
        ),
        out=out,
        dtype=dtype,
        batch_size=batch_size,
        decode_workers=decode_workers,
        workers=workers,
        scheduler=scheduler,
        skip_missing=skip_missing,
        force=force,
        image_shard_rows=image_shard_rows,
        text_shard_rows=text_shard_rows,
        views=view_spec,
    )
    path = build_cache(config)
    typer.echo(f"store complete: {path}")


@cache_app.command("fidelity")
def cache_fidelity(
    dataset: str = typer.Argument(..., help="the dataset the student trains on"),
    data_root: Path = DATA_ROOT,
    store: Path | None = typer.Option(
        None, help="read cached targets here [default: computed as the cache does]"
    ),
    teacher: str = typer.Option("ViT-B-16", help="open_clip model name or model-config JSON path"),
    pretrained: str = typer.Option("openai", help="open_clip tag, local checkpoint file, or 'none'"),
    allow_random_teacher: bool = typer.Option(False, help="allow --pretrained none"),
    teacher_crop: str = typer.Option("letterbox", help="the store's --teacher-crop"),
    student: str = typer.Option("transvg-r50", help="student preset whose train transform is measured"),
    image_size: int | None = typer.Option(None, help="override the preset's input size"),
    split: str = typer.Option("train"),
    samples: int = typer.Option(200, help="images (one record each)"),
    seed: int = typer.Option(0),
    kinds: str = typer.Option(",".join(("none", "scale", "crop", "flip", "jitter", "all"))),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """cos(cached [DIE], teacher on the exact augmented pixels the student sees), per augmentation."""
    from pipeline.fidelity import FidelityConfig, format_fidelity, measure_fidelity
    from pipeline.teacher import TeacherConfig, build_teacher
    from pipeline.views import student_transform

    config = FidelityConfig(
        dataset=dataset,
        data_root=data_root,
        transform=student_transform(student, image_size),
        split=split,
        samples=samples,
        seed=seed,
        kinds=tuple(kind.strip() for kind in kinds.split(",") if kind.strip()),
        store=store,
    )
    model = build_teacher(
        TeacherConfig(
            model=teacher, pretrained=pretrained, allow_random=allow_random_teacher, crop=teacher_crop
        )
    )
    report = measure_fidelity(model, config)
    typer.echo(json.dumps(report, indent=2) if as_json else format_fidelity(report))


@cache_app.command("info")
@one_line_errors
def cache_info(store: Path, as_json: bool = typer.Option(False, "--json")) -> None:
    """Summarize a store: fingerprint, tables, shards done, indices."""
    info = storage.store_info(store)
    _warn_if_random(info.get("extra", {}))
    if as_json:
        typer.echo(json.dumps(info, indent=2, default=str))
        return
    for key, value in info.items():
        typer.echo(f"{key}: {json.dumps(value, default=str) if isinstance(value, dict | list) else value}")


@cache_app.command("verify")
@one_line_errors
def cache_verify(store: Path) -> None:
    """Recompute every shard checksum; fail on unwritten, NaN or out-of-range rows."""
    report = storage.verify_store(store)
    for problem in report.problems:
        typer.secho(f"problem: {problem}", fg="red", err=True)
    if not report.ok:
        raise typer.Exit(1)
    typer.echo(f"ok: {store}")


@cache_app.command("export")
@one_line_errors
def cache_export(store: Path, h5: Path = typer.Option(..., "--h5", help="HDF5 file to write")) -> None:
    """Write the store as one HDF5 file (manifest in its attributes)."""
    storage.export_hdf5(store, h5)
    typer.echo(f"wrote {h5}")


@cache_app.command("import")
@one_line_errors
def cache_import(h5: Path = typer.Option(..., "--h5"), store: Path = typer.Option(..., "--out")) -> None:
    """Recreate a store from an exported HDF5 file."""
    storage.import_hdf5(h5, store)
    typer.echo(f"wrote {store}")


@teacher_app.command("train")
@one_line_errors
def teacher_train(
    dataset: str = typer.Argument(..., help="dataset name (e.g. shapes) or a .jsonl file"),
    data_root: Path = DATA_ROOT,
    out: Path = typer.Option(Path("runs/teacher"), help="folder for the checkpoint, model config and report"),
    model: str | None = typer.Option(
        None,
        help="open_clip model-config JSON or model name [default: pipeline/configs/teacher/clip-shapes.json]",
    ),
    epochs: int | None = typer.Option(None, help="passes over the train pairs [default: 6]"),
    batch_size: int | None = typer.Option(None, help="pairs per contrastive batch [default: 64]"),
    lr: float | None = typer.Option(None, help="AdamW peak learning rate [default: 2e-3]"),
    seed: int = typer.Option(0, help="seeds the initial weights, the batches and the flips"),
    max_seconds: float | None = typer.Option(
        None, help="stop training after this long (then not reproducible)"
    ),
    threads: int | None = typer.Option(None, help="torch CPU threads [default: torch's]"),
    skip_missing: bool = typer.Option(False, help="drop (and count) samples whose image is missing"),
) -> None:
    """Train a tiny open_clip CLIP contrastively on DATASET's train pairs; report val retrieval R@1.

    The checkpoint feeds the cache: `epmvg cache build DATASET --teacher OUT/<config>.json --pretrained
    OUT/teacher.safetensors`.
    """
    from pipeline.teacher_training import TeacherTrainingConfig, format_retrieval_table, train_teacher

    _setup_logging()
    check_out_dir(out)
    given = {"model": model, "epochs": epochs, "batch_size": batch_size, "lr": lr}
    config = TeacherTrainingConfig(
        dataset=dataset,
        data_root=data_root,
        out=out,
        seed=seed,
        max_seconds=max_seconds,
        threads=threads,
        skip_missing=skip_missing,
        **{name: value for name, value in given.items() if value is not None},
    )
    report = train_teacher(config)
    typer.echo(format_retrieval_table(report))
    stopped = " (stopped early by --max-seconds)" if report["stopped_early"] else ""
    typer.echo(f"trained {report['steps']} steps in {report['train_seconds']} s{stopped}")
    typer.echo(f"checkpoint: {report['checkpoint']}")
    typer.echo(f"model config: {report['model_config']}")
    typer.echo(f"cache it: {report['cache_command']}")


@app.command("train")
@one_line_errors
def train(
    dataset: str = typer.Argument(..., help="dataset name (see `epmvg data inspect`) or a .jsonl file"),
    data_root: Path = DATA_ROOT,
    out: Path = typer.Option(Path("runs/default"), help="run folder: checkpoints, metrics, plots"),
    cache: Path | None = typer.Option(
        None,
        help="Phase-1 store with the teacher targets (default: the one complete store under "
        "CACHE_ROOT/<dataset> built for these data)",
    ),
    cache_root: Path = CACHE_ROOT,
    distill: str = typer.Option("cached", help="none | cached | online"),
    student: str = typer.Option("transvg-r50", help="student preset: transvg-r50, small, shapes, tiny"),
    image_size: int | None = typer.Option(None, help="override the preset's input size"),
    student_set: list[str] = typer.Option(
        [], "--student-set", help="FIELD=VALUE on top of the preset (repeatable), e.g. backbone_out_index=-2"
    ),
    detr_weights: Path | None = typer.Option(
        None, help="DETR checkpoint for the visual branch, as TransVG (its detr-r50-<dataset>.pth)"
    ),
    epochs: int | None = typer.Option(None, help="default: the paper's (90; RefCOCO+ 180)"),
    lr_drop: int | None = typer.Option(None, help="epoch of the x0.1 drop (default: the paper's)"),
    batch_size: int = typer.Option(64),
    lr: float = typer.Option(1e-4),
    lr_pretrained: float = typer.Option(1e-5, help="lr of the pretrained backbone and text encoder"),
    weight_decay: float = typer.Option(1e-4),
    warmup_epochs: float = typer.Option(0.0),
    clip_grad: float = typer.Option(0.0, help="max gradient norm; 0 = off"),
    giou_weight: float = typer.Option(1.0, help="lambda"),
    image_weight: float = typer.Option(1.5, help="alpha, the [DIE] term"),
    text_weight: float = typer.Option(2.0, help="beta, the [DTE] term"),
    box: str = typer.Option("smooth_l1", "--box-loss", help="smooth_l1 | l1"),
    box_beta: float = typer.Option(1.0, help="smooth-L1 switch point on normalised coordinates"),
    distill_loss: str = typer.Option("cosine", "--distill-loss", help="cosine | l1"),
    image_term: bool = typer.Option(True, help="distil the image embedding"),
    text_term: bool = typer.Option(True, help="distil the text embedding"),
    cell_weight: float = typer.Option(1.0, help="weight of the cell loss (students with a cell head)"),
    align_weight: float = typer.Option(2.0, help="LGR-NET's lambda on its alignment loss L_align"),
    augment: bool = typer.Option(True, help="TransVG's augmentation (--no-augment: the eval transform)"),
    aug_translate: bool = typer.Option(
        False, help="TransVG's --aug_translate: place the image anywhere in the padded square (training)"
    ),
    precompute_frozen: bool = typer.Option(
        False,
        help="run the frozen backbone and text encoder once per image/text (needs --no-augment, or an "
        "exact-view cache: then once per stored view)",
    ),
    frozen_cache: Path | None = typer.Option(
        None, help="with --precompute-frozen: keep the tables here and reuse them in later runs"
    ),
    blank_text: bool = typer.Option(False, help="image-only control: every expression replaced by ''"),
    view_targets: str = typer.Option(
        "exact",
        help="exact-view caches: distil toward each view's own embedding (exact), or toward the whole "
        "image's as a view-less cache would (whole-image)",
    ),
    teacher: str = typer.Option("ViT-B-16", help="distill=online: open_clip model or config JSON"),
    pretrained: str = typer.Option("openai", help="distill=online: tag, checkpoint file or none"),
    allow_random_teacher: bool = typer.Option(False),
    teacher_trainable: bool = typer.Option(False, help="distill=online: fine-tune the teacher too"),
    device: str = DEVICE,
    workers: int = typer.Option(_default_workers(), help="data-loading processes (default: up to 4)"),
    persistent_workers: bool = typer.Option(True, help="keep data-loading processes across epochs"),
    seed: int = typer.Option(0),
    max_samples: int | None = typer.Option(None, help="cap each split (quick runs)"),
    train_fraction: float = typer.Option(1.0, help="train on a seeded fraction of the train images"),
    skip_missing: bool = typer.Option(False, help="drop (and count) samples whose image is missing"),
    resume: bool = typer.Option(False, help="continue from OUT/last.pt"),
    compile: bool = typer.Option(False, help="torch.compile the student"),
    sync_every: int = typer.Option(50, help="steps between host reads of the loss (NaN check, progress)"),
    settings: list[str] = typer.Option(
        [],
        "--set",
        help="SECTION.FIELD=VALUE for any field of the run's configs (repeatable; sections train, loss, "
        "student), e.g. --set loss.align_weight=0.5 --set train.eval_splits=val,test",
    ),
    ablations: bool = typer.Option(
        False, help="train EpmVG's ablation grid with this run as the baseline (one run per variant in OUT)"
    ),
    unfrozen_teacher: bool = typer.Option(
        False,
        help="with --ablations: add EpmVG's online distillation from a trainable teacher (--teacher, "
        "--pretrained FILE or none with --allow-random-teacher)",
    ),
) -> None:
    """Train the TransVG student; `torchrun --nproc-per-node N train_student.py ...` for DDP."""
    from pipeline.config_fields import field_names
    from pipeline.engine.ablations import run_ablations
    from pipeline.engine.config import TrainConfig, apply_settings, parse_settings
    from pipeline.engine.train import train as run_training
    from pipeline.losses import LossConfig
    from pipeline.student import parse_field_assignments

    _setup_logging()
    check_out_dir(out)
    device = resolve_device(device)
    workers = bounded_workers(workers, "--workers")
    if unfrozen_teacher and not ablations:
        raise ValueError("--unfrozen-teacher is a variant of the ablation grid: add --ablations")
    try:
        overrides = parse_field_assignments(student_set)
    except ValueError as error:
        raise ValueError(f"--student-set: {error}") from error  # name the option; reported by one_line_errors
    try:
        parsed_settings = parse_settings(settings)
    except ValueError as error:
        raise ValueError(f"--set: {error}") from error
    if image_size:
        overrides["image_size"] = image_size
    if detr_weights is not None:
        overrides["visual_init"] = str(detr_weights)
    if distill == "cached" and cache is None:
        cache = _found_store(dataset, data_root, cache_root)
    # The typed flags are named after their config fields: each section takes the flags that are its
    # fields (no hand-written copy per field), then `--set` lays any field over them.
    flags = locals()
    loss_flags = {name: flags[name] for name in field_names(LossConfig) if name in flags}
    loss_flags["distill"] = distill_loss  # `--distill` is the run's mode; `--distill-loss` the loss's
    train_flags = {name: flags[name] for name in field_names(TrainConfig) if name in flags}
    train_flags.update(student_overrides=overrides, loss=LossConfig(**loss_flags))
    train_flags.update(teacher_model=teacher, teacher_pretrained=pretrained)
    config = apply_settings(TrainConfig(**train_flags), parsed_settings)
    if ablations:
        results = run_ablations(config, unfrozen_teacher=unfrozen_teacher)
        if os.environ.get("RANK", "0") == "0":  # torchrun: one line, not one per rank
            typer.echo(f"results: {results}")
    else:
        run_training(config)


@app.command("eval")
@one_line_errors
def evaluate(
    checkpoint: Path = typer.Option(..., help="a run's best.pt or last.pt"),
    data_root: Path = DATA_ROOT,
    dataset: str | None = typer.Option(None, help="default: the checkpoint's"),
    splits: list[str] = typer.Option([], "--split", help="default: every split but train"),
    batch_size: int = typer.Option(64),
    device: str = DEVICE,
    skip_missing: bool = typer.Option(False),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Acc@0.5 and mean IoU per split for a checkpoint."""
    from pipeline.engine.evaluate import evaluate_checkpoint, format_table

    device = resolve_device(device)
    results = evaluate_checkpoint(checkpoint, data_root, dataset, splits, batch_size, device, skip_missing)
    typer.echo(json.dumps(results, indent=2) if as_json else format_table(results))


@app.command("diagnose")
@one_line_errors
def diagnose(
    checkpoint: Path = typer.Option(..., help="a run's best.pt or last.pt"),
    data_root: Path = DATA_ROOT,
    split: str = typer.Option("val"),
    samples: int = typer.Option(32, help="records probed (one batch)"),
    skip_missing: bool = typer.Option(False),
) -> None:
    """Does the student read the image? Box spread over images vs texts, and [REG]'s attention split."""
    from pipeline.engine.diagnose import diagnose_checkpoint

    report = diagnose_checkpoint(checkpoint, data_root, split, samples, skip_missing)
    typer.echo(json.dumps(report, indent=2))


@app.command("predict")
@one_line_errors
def predict(
    checkpoint: Path = typer.Option(...),
    image: Path = typer.Option(...),
    text: str = typer.Option(...),
    out: Path = typer.Option(Path("pred.png")),
    device: str = DEVICE,
) -> None:
    """Ground TEXT in IMAGE and draw the predicted box."""
    from pipeline.engine.evaluate import load_student, predict_image
    from pipeline.engine.plots import plot_prediction

    check_out_file(out)
    model, _, _ = load_student(checkpoint, resolve_device(device))
    box = predict_image(model, image, text)
    plot_prediction(image, text, box, out)
    typer.echo(json.dumps({"box_xyxy": [round(v, 1) for v in box], "out": str(out)}))


@app.command("demo")
@one_line_errors
def demo(
    out: Path = typer.Option(Path("demo"), help="folder for data, cache, run and report"),
    quick: bool = typer.Option(False, help="a seconds-long smoke version (tests)"),
) -> None:
    """Offline end to end on the synthetic shapes dataset: data, cache, train, eval, report."""
    from pipeline.demo import DemoConfig, run_demo

    _setup_logging()
    summary = run_demo(DemoConfig.quick(out) if quick else DemoConfig(out=out))
    typer.echo(f"report: {out / 'report.md'} ({summary['wall_seconds']} s)")


@app.command("experiment")
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
    from pipeline.experiment import ExperimentConfig, run_experiment

    _setup_logging()
    if quick:
        config = ExperimentConfig.quick(study, out)
    else:
        demo = dataclasses.replace(
            ExperimentConfig().demo, out=out, epochs=epochs, lr_drop=max(1, round(0.85 * epochs))
        )
        config = ExperimentConfig(study=study, out=out, seeds=tuple(range(seeds)), demo=demo)
    results = run_experiment(config)
    typer.echo(f"results: {results}")


@app.command("ablations")
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
    with an LGR-NET student (`--student lgrnet-tiny`), LGR-NET's grid (pipeline/engine/ablations.py).

    The shortcut for the shapes data and QUICK runs; on a real dataset, `epmvg train DATASET [--cache
    STORE] --ablations ...` runs the same grid with every training option (DETR weights, schedule, DDP).
    Without --cache the store is the one under CACHE_ROOT/<dataset> built for these data; on shapes
    only, when none is, a demo store of a RANDOM-weight tiny teacher is built in OUT/cache.
    """
    import dataclasses

    from pipeline.cache_job import CacheJobConfig, build_cache
    from pipeline.demo import demo_teacher, ensure_shapes, quick_ablation_base
    from pipeline.engine.ablations import run_ablations
    from pipeline.engine.config import TrainConfig
    from pipeline.store_lookup import NoMatchingStoreError

    _setup_logging()
    device = resolve_device(device)
    if dataset == "shapes" and not (data_root / "splits" / "shapes").is_dir():
        data_root = ensure_shapes(out / "data", images=60 if quick else 600, seed=0)
    try:
        cache = cache or _found_store(dataset, data_root, cache_root)
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


def _found_store(dataset: str, data_root: Path, cache_root: Path) -> Path:
    """The store `train`/`ablations` use without --cache (`pipeline/store_lookup.py`); says which."""
    from pipeline.store_lookup import find_store

    store = find_store(dataset, data_root, cache_root)
    if os.environ.get("RANK", "0") == "0":  # torchrun: one line, not one per rank
        typer.echo(f"cache: {store} (the one store under {cache_root / dataset} built for these data)")
    return store


def _warn_if_random(extra: dict) -> None:
    if extra.get("random_teacher"):
        typer.secho(
            "warning: this store was made by a RANDOM-weight teacher (--pretrained none)",
            fg="yellow",
            err=True,
        )


if __name__ == "__main__":
    app()
