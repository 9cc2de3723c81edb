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
        for box, colour in ((item["target"], "lime"), (item["box"], "red")):
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


def plot_experiment(rows: list[dict], priors: dict[float, dict[str, dict]], out: Path, title: str) -> Path:
    """Test Acc@0.5 (mean ± std over seeds) per variant, grouped by training-set size, priors dashed.

    rows: `experiment.aggregate`'s (fraction, variant, "test acc@0.5" and its std); priors: per
    fraction, {prior name: {split: scores}}.
    """
    fractions = list(dict.fromkeys(row["fraction"] for row in rows))
    variants = list(dict.fromkeys(row["variant"] for row in rows))
    width = 0.8 / len(variants)
    fig, ax = plt.subplots(figsize=(2.2 + 2.2 * len(fractions), 4))
    for v, variant in enumerate(variants):
        mine = {row["fraction"]: row for row in rows if row["variant"] == variant}
        x = [f + (v - (len(variants) - 1) / 2) * width for f in range(len(fractions))]
        means = [100 * mine[fraction]["test acc@0.5"] for fraction in fractions]
        stds = [100 * mine[fraction]["test acc@0.5 std"] for fraction in fractions]
        ax.bar(x, means, width, yerr=stds, capsize=3, label=variant)
    for f, fraction in enumerate(fractions):
        for name, style in (("text-only prior", "--"), ("centre prior", ":")):
            value = 100 * priors[fraction][name]["test"]["acc@0.5"]
            ax.hlines(
                value, f - 0.45, f + 0.45, colors="black", linestyles=style, label=name if f == 0 else None
            )
    ax.set_xticks(range(len(fractions)), [f"{100 * fraction:g}% of train images" for fraction in fractions])
    ax.set(ylabel="test Acc@0.5 (%)", title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
