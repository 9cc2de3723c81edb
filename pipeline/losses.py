"""EpmVG training objective: box regression + GIoU (TransVG) plus cross-modal distillation.

    L = L_box(b, b̂) + λ·L_giou(b, b̂) + L_dist                                  (total)
    L_dist = α·d(VLS, pool(DIE)) + β·d(CLS, pool(DTE))                          (distillation)
    L_cell = BCE(cell logits, [cell centre inside b])           (this kit's auxiliary, off by default)

Every equation is one function below. Boxes are normalised (cx, cy, w, h); batch reductions follow
TransVG: a box loss is summed over its 4 coordinates and averaged over the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_convert, generalized_box_iou_loss

if TYPE_CHECKING:
    from pipeline.student.model import StudentOutput

BoxLossKind = Literal["smooth_l1", "l1"]
DistillKind = Literal["cosine", "l1"]


def box_regression_loss(
    pred: Tensor, target: Tensor, kind: BoxLossKind = "smooth_l1", beta: float = 1.0
) -> Tensor:
    """Coordinate loss L_box(b, b̂) of the total loss: smooth-L1 (EpmVG) or L1 (TransVG).

    pred, target: [B, 4] normalised cxcywh. Summed over coordinates, averaged over the batch.
    `beta` is the smooth-L1 switch point (torch's default, 1.0).
    """
    if kind == "smooth_l1":
        per_coord = F.smooth_l1_loss(pred, target, reduction="none", beta=beta)
    elif kind == "l1":
        per_coord = F.l1_loss(pred, target, reduction="none")
    else:
        raise ValueError(f"unknown box loss {kind!r}; expected 'smooth_l1' or 'l1'")
    return per_coord.sum(dim=-1).mean()


def giou_loss(pred_cxcywh: Tensor, target_cxcywh: Tensor) -> Tensor:
    """GIoU term L_giou(b, b̂) = 1 − GIoU of the total loss, averaged over the batch."""
    pred = box_convert(pred_cxcywh, "cxcywh", "xyxy")
    target = box_convert(target_cxcywh, "cxcywh", "xyxy")
    return generalized_box_iou_loss(pred, target, reduction="mean")


def pool_teacher(embedding: Tensor, width: int) -> Tensor:
    """pool(·) of the distillation loss: adaptive average pooling of a teacher vector [B, d] to [B, width].

    Lets a CLIP embedding of any width (512, 768, ...) supervise the student's D-wide tokens without a
    learned projection, so the teacher stays untouched.
    """
    return F.adaptive_avg_pool1d(embedding.unsqueeze(1), width).squeeze(1)


def distillation_loss(
    student_token: Tensor, teacher_embedding: Tensor, kind: DistillKind = "cosine", teacher_grad: bool = False
) -> Tensor:
    """One distillation term d(token, pool(teacher)): 1 − cosine similarity (EpmVG) or L1, batch mean.

    student_token: [B, D] ([VLS] or [CLS]); teacher_embedding: [B, d] (cached DIE or DTE). The teacher is
    frozen, so no gradient flows into it even when handed a tensor that requires one; teacher_grad=True
    lets it through, for the unfrozen-teacher ablation.
    """
    if not teacher_grad:
        teacher_embedding = teacher_embedding.detach()
    teacher = pool_teacher(teacher_embedding.to(student_token.dtype), student_token.shape[-1])
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(student_token, teacher, dim=-1)).mean()
    if kind == "l1":
        return F.l1_loss(student_token, teacher)
    raise ValueError(f"unknown distillation loss {kind!r}; expected 'cosine' or 'l1'")


def target_cell_loss(cell_logits: Tensor, target_cxcywh: Tensor) -> Tensor:
    """L_cell: binary cross-entropy of each visual cell's logit against "the cell's centre lies inside
    the target box", averaged over cells and batch.

    Not an equation of TransVG or EpmVG: a dense auxiliary of this kit (StudentConfig.cell_head). The
    box loss reaches the fusion only through one [REG] token, so early on its gradient mostly says
    "move toward the mean box"; a label per cell tells every visual token directly whether it is the
    object the text means. cell_logits: [B, h·w] over a square grid that covers the padded input, so
    cell (i, j) has its centre at ((j + ½)/w, (i + ½)/h) in the box's normalized coordinates.
    """
    cells = cell_logits.shape[-1]
    side = math.isqrt(cells)
    if side * side != cells:
        raise ValueError(f"target_cell_loss needs a square grid, got {cells} cells")
    centres = (torch.arange(side, device=cell_logits.device, dtype=torch.float32) + 0.5) / side
    box = box_convert(target_cxcywh.float(), "cxcywh", "xyxy")
    inside_x = (centres >= box[:, 0:1]) & (centres <= box[:, 2:3])  # [B, w]
    inside_y = (centres >= box[:, 1:2]) & (centres <= box[:, 3:4])  # [B, h]
    labels = (inside_y[:, :, None] & inside_x[:, None, :]).flatten(1).float()
    return F.binary_cross_entropy_with_logits(cell_logits.float(), labels)


@dataclass
class LossConfig:
    """Weights and variants of the EpmVG objective (paper defaults)."""

    giou_weight: float = 1.0  # λ
    image_weight: float = 1.5  # α, on the [VLS] ↔ image-embedding term
    text_weight: float = 2.0  # β, on the [CLS] ↔ text-embedding term
    box: BoxLossKind = "smooth_l1"
    box_beta: float = 1.0  # smooth-L1's switch point; below it the loss is quadratic
    distill: DistillKind = "cosine"
    image_term: bool = True
    text_term: bool = True
    cell_weight: float = 1.0  # on L_cell, when the student has a cell head (StudentConfig.cell_head)


def grounding_loss(
    output: StudentOutput,
    target_box: Tensor,
    teacher_image: Tensor | None = None,
    teacher_text: Tensor | None = None,
    config: LossConfig | None = None,
    teacher_grad: bool = False,
) -> dict[str, Tensor]:
    """Total EpmVG loss L = L_box + λ·L_giou + α·d(VLS, pool(DIE)) + β·d(CLS, pool(DTE)).

    Returns the unweighted terms ("box", "giou", and "distill_image" / "distill_text" when that term is
    on and its teacher tensor is given) and their weighted sum "total". Without teacher tensors this is
    plain TransVG training. teacher_grad=True lets the distillation gradient reach a trainable teacher.
    """
    config = config or LossConfig()
    # Losses in float32 even when the student ran under bf16/fp16 autocast.
    box, vls, cls = output.box.float(), output.vls.float(), output.cls.float()
    target_box = target_box.float()
    terms = {
        "box": box_regression_loss(box, target_box, config.box, config.box_beta),
        "giou": giou_loss(box, target_box),
    }
    total = terms["box"] + config.giou_weight * terms["giou"]
    if output.cell_logits is not None:
        terms["cell"] = target_cell_loss(output.cell_logits, target_box)
        total = total + config.cell_weight * terms["cell"]
    if config.image_term and teacher_image is not None:
        terms["distill_image"] = distillation_loss(vls, teacher_image, config.distill, teacher_grad)
        total = total + config.image_weight * terms["distill_image"]
    if config.text_term and teacher_text is not None:
        terms["distill_text"] = distillation_loss(cls, teacher_text, config.distill, teacher_grad)
        total = total + config.text_weight * terms["distill_text"]
    terms["total"] = total
    return terms


__all__ = [
    "LossConfig",
    "box_regression_loss",
    "distillation_loss",
    "giou_loss",
    "grounding_loss",
    "pool_teacher",
    "target_cell_loss",
]
