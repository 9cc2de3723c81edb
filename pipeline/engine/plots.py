"""Training curves and prediction galleries (matplotlib, no display needed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.patches as patches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.data.images import read_rgb  # noqa: E402


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(metrics_path: Path, out: Path) -> Path:
    """Loss terms and val Acc@0.5 per epoch from the run's metrics JSONL."""
    epochs = [row for row in read_metrics(metrics_path) if row.get("kind") == "epoch"]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    x = [row["epoch"] for row in epochs]
    for key in sorted({k for row in epochs for k in row if k.startswith("loss/")}):
        loss_ax.plot(x, [row.get(key, math.nan) for row in epochs], marker="o", label=key[5:])
    loss_ax.set(xlabel="epoch", ylabel="train loss", title="training loss")
    loss_ax.legend(fontsize=8)
    acc_ax.plot(x, [100 * row.get("val/acc@0.5", math.nan) for row in epochs], marker="o", color="tab:green")
    acc_ax.set(xlabel="epoch", ylabel="Acc@0.5 (%)", title="validation accuracy", ylim=(0, 100))
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_gallery(items: list[dict], out: Path, columns: int = 4) -> Path:
    """Each item: image_path, text, box (prediction, pixels xyxy), target (ground truth), iou."""
    rows = max(1, math.ceil(len(items) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, item in zip(axes.flat, items, strict=False):
        with Image.open(item["image_path"]) as image:  # validated when its split was read
            ax.imshow(image.convert("RGB"))
        # A box-less record (an image-text pair) has no target to draw.
        for box, colour in ((item["target"], "lime"), (item["box"], "red")):
            if box is None:
                continue
            x1, y1, x2, y2 = box
            ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color=colour, lw=2))
        ax.set_title(f"{item['text'][:40]}\nIoU {item['iou']:.2f}", fontsize=8)
    fig.suptitle("green: ground truth   red: prediction", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def plot_prediction(image_path: Path, text: str, box: tuple[float, ...], out: Path) -> Path:
    """One image with the predicted box and the expression as title."""
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(read_rgb(image_path))
    x1, y1, x2, y2 = box
    ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="red", lw=3))
    ax.set_title(text, fontsize=10)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_experiment(rows: list[dict], priors: dict[str, dict[str, dict]], out: Path, title: str) -> Path:
    """Test Acc@0.5 (mean ± std over seeds) per variant, grouped by data setting and training-set size,
    priors dashed.

    rows: `experiment.aggregate`'s (group, variant, "test acc@0.5" and its std); priors: per group,
    {prior name: {split: scores}}.
    """
    groups = list(priors)
    variants = list(dict.fromkeys(row["variant"] for row in rows))
    width = 0.8 / len(variants)
    fig, ax = plt.subplots(figsize=(2.2 + 2.6 * len(groups), 4))
    for v, variant in enumerate(variants):
        mine = {row["group"]: row for row in rows if row["variant"] == variant}
        x = [g + (v - (len(variants) - 1) / 2) * width for g in range(len(groups))]
        means = [100 * mine[group]["test acc@0.5"] for group in groups]
        stds = [100 * mine[group]["test acc@0.5 std"] for group in groups]
        ax.bar(x, means, width, yerr=stds, capsize=3, label=variant)
    for g, group in enumerate(groups):
        for name, style in (("text-only prior", "--"), ("centre prior", ":")):
            value = 100 * priors[group][name]["test"]["acc@0.5"]
            ax.hlines(
                value, g - 0.45, g + 0.45, colors="black", linestyles=style, label=name if g == 0 else None
            )
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.set(ylabel="test Acc@0.5 (%)", title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
