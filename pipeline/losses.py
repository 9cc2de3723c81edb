"""EpmVG training objective: box regression + GIoU (TransVG) plus cross-modal distillation.

    L = L_box(b, b̂) + λ·L_giou(b, b̂) + L_dist                                  (total)
    L_dist = α·d(VLS, pool(DIE)) + β·d(CLS, pool(DTE))                          (distillation)
    L_cell = BCE(cell logits, [cell centre inside b])           (this kit's auxiliary, off by default)

LGR-NET (Lu et al., TCSVT 2024), the second student, trains with:

    L = Σ_layers [L_box(b_i, b̂) + λ_giou·L_giou(b_i, b̂)] + λ·L_align (+ L_dist)         (Eq. 8)
    L_align = InfoNCE(FFN_obj(f_p), f_sent; τ)                                          (Eq. 9-11)

Every equation is one function below; `pipeline/criterion.py` names them as loss terms, weights them
(`LossConfig.weight_dict`) and sums the terms each student declares. Boxes are normalised
(cx, cy, w, h); batch reductions follow TransVG: a box loss is summed over its 4 coordinates and
averaged over the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_convert, generalized_box_iou_loss

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
    """Weights and variants of the objective (paper defaults); `weight_dict()` is the one mapping of
    term name → weight that `pipeline.criterion.Criterion` sums with."""

    giou_weight: float = 1.0  # λ
    image_weight: float = 1.5  # α, on the [VLS] ↔ image-embedding term
    text_weight: float = 2.0  # β, on the [CLS] ↔ text-embedding term
    box: BoxLossKind = "smooth_l1"
    box_beta: float = 1.0  # smooth-L1's switch point; below it the loss is quadratic
    distill: DistillKind = "cosine"
    image_term: bool = True
    text_term: bool = True
    cell_weight: float = 1.0  # on L_cell, when the student has a cell head (StudentConfig.cell_head)
    align_weight: float = 2.0  # LGR-NET's λ on L_align (Eq. 8); other students have no L_align

    def weight_dict(self) -> dict[str, float]:
        """Every term this configuration switches on, with its weight. A student sums the terms it
        declares that are here; a term switched off (`image_term=False`) is absent, not weighted 0."""
        weights = {
            "box": 1.0,
            "giou": self.giou_weight,
            "cell": self.cell_weight,
            "align": self.align_weight,
            "distill_image": self.image_weight,
            "distill_text": self.text_weight,
        }
        if not self.image_term:
            del weights["distill_image"]
        if not self.text_term:
            del weights["distill_text"]
        return weights


def layer_summed_box_loss(
    layer_boxes: Tensor, target_cxcywh: Tensor, kind: BoxLossKind = "l1"
) -> tuple[Tensor, Tensor]:
    """LGR-NET Eq. 8's deep supervision: (Σ_i L_box(b_i, b̂), Σ_i L_giou(b_i, b̂)) over the boxes of
    the N reasoning layers, layer_boxes [N, B, 4] cxcywh; each term as `box_regression_loss` and
    `giou_loss` reduce it (batch mean), summed over layers, not averaged."""
    box = torch.stack([box_regression_loss(boxes, target_cxcywh, kind) for boxes in layer_boxes]).sum()
    giou = torch.stack([giou_loss(boxes, target_cxcywh) for boxes in layer_boxes]).sum()
    return box, giou


def gather_across_ranks(features: Tensor) -> Tensor:
    """[B, D] → [world·B, D]: every rank's rows, this rank's in place, with gradients flowing back to
    each rank's own rows (torch.distributed.nn's all_gather); unchanged outside a process group.

    L_align's negatives are the other samples of the batch, so under DDP the batch is the global one,
    as in CLIP. Every rank must pass the same B (the trainer's samplers give equal shares).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return features
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(features), dim=0)


def info_nce_loss(f_obj: Tensor, f_sent: Tensor, log_temperature: Tensor) -> Tensor:
    """LGR-NET Eq. 9-11, L_align: InfoNCE between object features f_obj [B, D] and sentence features
    f_sent [B, D], the matching pairs on the diagonal.

    logits = cos(f_obj_i, f_sent_j) / τ with τ = exp(log_temperature) (learnable, starts at 0.07).
    The paper does not say which direction; this is the symmetric form (CLIP's): the mean of the
    object→sentence and sentence→object cross-entropies. τ is floored at 0.01 (CLIP caps 1/τ at 100)
    so the logits cannot blow up.
    """
    obj = F.normalize(f_obj.float(), dim=-1)
    sent = F.normalize(f_sent.float(), dim=-1)
    temperature = log_temperature.float().exp().clamp(min=0.01)
    logits = obj @ sent.T / temperature
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


__all__ = [
    "LossConfig",
    "gather_across_ranks",
    "info_nce_loss",
    "layer_summed_box_loss",
    "box_regression_loss",
    "distillation_loss",
    "giou_loss",
    "pool_teacher",
    "target_cell_loss",
]
