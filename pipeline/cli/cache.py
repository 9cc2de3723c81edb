"""Phase 1 commands: `epmvg cache ...` (build, fidelity, info, verify, export, import) and
`epmvg teacher train`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

import storage
from pipeline.cli.common import (
    DATA_ROOT,
    DEVICE,
    setup_logging,
    warn_if_random,
)
from pipeline.cli.errors import one_line_errors
from pipeline.cli.options import bounded_workers, check_out_dir, resolve_device

cache_app = typer.Typer(no_args_is_help=True, help="Phase 1: the frozen-CLIP teacher feature cache.")
teacher_app = typer.Typer(
    no_args_is_help=True, help="Train a tiny CLIP teacher on a dataset's own pairs (no CLIP weights needed)."
)


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
    batch_size: int = typer.Option(256, help="images per teacher batch"),
    text_batch_size: int = typer.Option(4096, help="texts per teacher batch"),
    decode_workers: int | None = typer.Option(
        None, help="image-decoding processes per teacher [default: the usable CPUs, shared by the teachers]"
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
    from pipeline.teacher import TeacherConfig
    from pipeline.teacher.cache_job import CacheJobConfig, build_cache
    from pipeline.teacher.views import ViewSpec, student_transform

    setup_logging()
    device = resolve_device(device)
    if decode_workers is not None:
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
        text_batch_size=text_batch_size,
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
    from pipeline.teacher import TeacherConfig, build_teacher
    from pipeline.teacher.fidelity import FidelityConfig, format_fidelity, measure_fidelity
    from pipeline.teacher.views import student_transform

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
    warn_if_random(info.get("extra", {}))
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
    from pipeline.teacher.training import TeacherTrainingConfig, format_retrieval_table, train_teacher

    setup_logging()
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
