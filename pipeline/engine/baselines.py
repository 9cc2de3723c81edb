"""The trivial baselines a grounding result is read against: the centre prior and the text-only prior.

Both predict from the training split alone, without looking at the test image:
- centre prior: one box, the mean training box size, centred in the image;
- text-only prior: the mean training box of each distinct expression (the best a model that reads
  only the text can do under L1 on these records; unseen expressions get the overall mean box).

Boxes are compared in coordinates normalized by the image's width and height: IoU does not change
under a per-axis scaling, so the figures are the pixel-space ones.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torchvision.ops import box_convert

from pipeline.data.sample import Sample
from pipeline.metrics import accuracy_at, box_iou_pairs


def normalized_boxes(samples: Sequence[Sample]) -> Tensor:
    """[N, 4] cxcywh boxes divided by their image's (width, height); each image header is read once."""
    sizes: dict[Path, tuple[int, int]] = {}
    rows = []
    for sample in samples:
        if sample.image_path not in sizes:
            with Image.open(sample.image_path) as image:
                sizes[sample.image_path] = image.size
        width, height = sizes[sample.image_path]
        rows.append(torch.tensor(sample.box_xyxy, dtype=torch.float64) / torch.tensor([width, height] * 2))
    return box_convert(torch.stack(rows), "xyxy", "cxcywh")


def centre_prior(train: Sequence[Sample]) -> Tensor:
    """The centre prior's one box (cxcywh): the mean training width and height at (0.5, 0.5)."""
    mean = normalized_boxes(train).mean(dim=0)
    return torch.tensor([0.5, 0.5, float(mean[2]), float(mean[3])], dtype=torch.float64)


def text_prior(train: Sequence[Sample]) -> tuple[dict[str, Tensor], Tensor]:
    """Mean training box (cxcywh) per distinct expression, and the overall mean for unseen ones."""
    boxes = normalized_boxes(train)
    rows_of: dict[str, list[int]] = defaultdict(list)
    for row, sample in enumerate(train):
        rows_of[sample.text].append(row)
    per_text = {text: boxes[rows].mean(dim=0) for text, rows in rows_of.items()}
    return per_text, boxes.mean(dim=0)


def score(predicted_cxcywh: Tensor, samples: Sequence[Sample]) -> dict[str, float]:
    """Acc@0.5 and mean IoU of one predicted box per sample."""
    target = box_convert(normalized_boxes(samples), "cxcywh", "xyxy")
    ious = box_iou_pairs(box_convert(predicted_cxcywh, "cxcywh", "xyxy"), target)
    return {"acc@0.5": float(accuracy_at(ious, 0.5)), "miou": float(ious.mean()), "n": len(samples)}


def prior_results(train: Sequence[Sample], splits: dict[str, Sequence[Sample]]) -> dict[str, dict]:
    """{"centre prior": {split: scores}, "text-only prior": {split: scores}} for each held-out split."""
    centre = centre_prior(train)
    per_text, overall = text_prior(train)
    results: dict[str, dict] = {"centre prior": {}, "text-only prior": {}}
    for split, samples in splits.items():
        results["centre prior"][split] = score(centre.expand(len(samples), 4), samples)
        by_text = torch.stack([per_text.get(sample.text, overall) for sample in samples])
        results["text-only prior"][split] = score(by_text, samples)
    return results
