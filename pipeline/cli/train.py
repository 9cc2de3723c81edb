"""Phase 2 commands: `epmvg train` (and `train --ablations`), `eval`, `diagnose`, `predict`."""

from __future__ import annotations

import json
import os
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
from pipeline.cli.options import (
    bounded_workers,
    check_out_dir,
    check_out_file,
    default_loader_workers,
    resolve_device,
)


def register(app: typer.Typer) -> None:
    for name, command in (("train", train), ("eval", evaluate), ("diagnose", diagnose), ("predict", predict)):
        app.command(name)(command)


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
    frozen_dtype: str = typer.Option(
        "auto",
        help="with --precompute-frozen: the tables' storage, auto (bfloat16 on CUDA) | bfloat16 | float32",
    ),
    frozen_budget_gb: float | None = typer.Option(
        None, help="with --precompute-frozen: refuse tables over this many GiB (default: half the RAM)"
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
    workers: int = typer.Option(
        default_loader_workers(),
        help="data-loading processes per rank (default: the usable CPUs / the ranks on this node, up to 8)",
    ),
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
    """Train a student (TransVG, LGR-NET: `--student`).

    Under DDP: `torchrun --nproc-per-node N train_student.py ...`."""
    from pipeline.config_fields import field_names
    from pipeline.engine.config import TrainConfig, apply_settings, parse_settings
    from pipeline.engine.train import train as run_training
    from pipeline.losses import LossConfig
    from pipeline.student import parse_field_assignments
    from pipeline.studies.ablations import run_ablations

    setup_logging()
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
        cache = found_store(dataset, data_root, cache_root)
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


@one_line_errors
def evaluate(
    checkpoint: Path = typer.Option(..., help="a run's best.pt or last.pt"),
    data_root: Path = DATA_ROOT,
    dataset: str | None = typer.Option(None, help="default: the checkpoint's"),
    splits: list[str] = typer.Option([], "--split", help="default: every split but train"),
    batch_size: int | None = typer.Option(None, help="default: the run's --batch-size"),
    device: str = DEVICE,
    workers: int = typer.Option(
        default_loader_workers(), help="data-loading processes (default: as `train`'s, up to 8)"
    ),
    skip_missing: bool = typer.Option(False),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Acc@0.5 and mean IoU per split for a checkpoint, evaluated as its run did (autocast, batch)."""
    from pipeline.engine.evaluate import evaluate_checkpoint, format_table

    device = resolve_device(device)
    workers = bounded_workers(workers, "--workers")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    results = evaluate_checkpoint(
        checkpoint, data_root, dataset, splits, batch_size, device, skip_missing, workers=workers
    )
    typer.echo(json.dumps(results, indent=2) if as_json else format_table(results))


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
