"""Grounding metrics: IoU of each predicted box with its target, and accuracy at an IoU threshold."""

from __future__ import annotations

from torch import Tensor
from torchvision.ops import box_iou


def box_iou_pairs(pred_xyxy: Tensor, target_xyxy: Tensor) -> Tensor:
    """IoU [B] of pred[i] with target[i] (boxes [B, 4] as x1, y1, x2, y2)."""
    return box_iou(pred_xyxy, target_xyxy).diagonal()


def accuracy_at(ious: Tensor, threshold: float = 0.5) -> Tensor:
    """Fraction of predictions with IoU >= `threshold` (Acc@0.5, as TransVG counts it)."""
    return (ious >= threshold).float().mean()


def clamp_normalized(box_xyxy: Tensor) -> Tensor:
    """A predicted box clamped to the (padded) input, [0, 1] in normalized coordinates, as TransVG
    does before its IoU."""
    return box_xyxy.clamp(0.0, 1.0)
