"""A run's written record: its metrics file (one row per epoch, resume notes), and at the end the
summary, the results table, the curves and the gallery of val predictions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.data.sample import Sample
from pipeline.engine.evaluate import Prediction, format_table
from pipeline.engine.plots import plot_curves, plot_gallery, read_metrics

METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"  # <out>/tensorboard/: the live signals, for `tensorboard --logdir`


def open_live_signals(out: Path):
    """A TensorBoard writer under `<out>/tensorboard/` (rank 0 only opens one). A resumed run adds
    an event file beside the earlier ones; TensorBoard orders them by step."""
    from torch.utils.tensorboard import SummaryWriter  # deferred: eval and predict never pay for it

    return SummaryWriter(log_dir=str(Path(out) / TENSORBOARD))


def write_scalars(writer, row: dict[str, Any], step: int) -> None:
    """Every number of `row` (a metrics row: losses, lr, val metrics, samples/s, data wait, peak GPU
    memory) as a scalar at `step`, its key the tag; the row's counters (epoch, step) are the axis."""
    if writer is None:
        return
    for key, value in row.items():
        if key not in ("epoch", "step") and isinstance(value, int | float) and not isinstance(value, bool):
            writer.add_scalar(key, value, step)


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(row) + "\n")


def start_metrics(path: Path, resumed_epoch: int | None, changes: dict[str, list[Any]]) -> None:
    """A new run (`resumed_epoch` None) starts a new metrics file; a resumed one drops rows of epochs
    its checkpoint lacks (trained, then lost to a crash before the save: they are trained again) and
    notes its option changes."""
    if resumed_epoch is None:
        path.write_text("")
        return
    rows = read_metrics(path) if path.is_file() else []
    kept = [row for row in rows if row.get("kind") != "epoch" or row["epoch"] <= resumed_epoch]
    if changes:
        kept.append({"kind": "resume", "epoch": resumed_epoch, "changed": changes})
    path.write_text("".join(json.dumps(row) + "\n" for row in kept))


def write_gallery(predictions: list[Prediction], samples: list[Sample], size: int, path: Path) -> None:
    """The first `size` val predictions drawn over their images, with the target box."""
    by_index = {sample.index: sample for sample in samples}
    items = [
        {
            "image_path": by_index[p.index].image_path,
            "text": by_index[p.index].text,
            "box": p.box_xyxy,
            "target": by_index[p.index].box_xyxy,
            "iou": p.iou,
        }
        for p in predictions[:size]
    ]
    if items:
        plot_gallery(items, path)


def write_run_report(
    out: Path,
    summary: dict[str, Any],
    val_predictions: list[Prediction],
    val_samples: list[Sample],
    gallery_size: int,
) -> None:
    """summary.json, results.md, curves.png (from the metrics file) and gallery.png; prints the table."""
    results = summary["results"]
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "results.md").write_text(format_table(results) + "\n")
    if (out / METRICS).is_file():
        plot_curves(out / METRICS, out / "curves.png")
    write_gallery(val_predictions, val_samples, gallery_size, out / "gallery.png")
    print(format_table(results))
