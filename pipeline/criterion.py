"""The training objective as a criterion, in the style of DETR's `SetCriterion`: named loss terms,
one weight mapping, and diagnostics logged beside the losses.

    total = Σ_{name ∈ student's terms ∩ weight_dict} weight_dict[name] · term_name(output, targets)

Each term below is one function that calls the paper equation it names in `pipeline/losses.py`. A
student declares the terms it uses, name → function (its `StudentArchitecture.loss_terms` in
`pipeline/student/registry.py`): TransVG's "box" is one box's L_box, LGR-NET's "box" is Eq. 8's sum
over its reasoning layers, under the same name and weight. The weights live in one mapping,
`LossConfig.weight_dict()`. A term whose input is absent in a batch (no teacher target, no cell
head, no box on a weakly supervised record) returns None and is left out of that step. A new loss
term is one function here and its name in the students' declarations and in `weight_dict`.

Diagnostics (e.g. how many pairs L_align saw) are named functions too; the trainer logs them as
`diag/<name>`, never as a loss.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from pipeline.losses import (
    LossConfig,
    box_regression_loss,
    distillation_loss,
    gather_across_ranks,
    giou_loss,
    info_nce_loss,
    target_cell_loss,
)


@dataclass(frozen=True)
class LossTargets:
    """What a step's loss is computed against."""

    box: Tensor | None  # [B, 4] normalised cxcywh (None: box-less records, weak supervision)
    teacher_image: Tensor | None = None  # [B, d] [DIE] of each sample's variant, or None (no CD)
    teacher_text: Tensor | None = None  # [B, d] [DTE]
    teacher_grad: bool = False  # let the distillation gradient reach a trainable teacher


# (student output, targets, config) → the unweighted term, or None when its input is absent
LossTerm = Callable[[Any, LossTargets, LossConfig], Tensor | None]
# (student output) → a value logged beside the losses
Diagnostic = Callable[[Any], Tensor]


def box_term(output: Any, targets: LossTargets, config: LossConfig) -> Tensor | None:
    """L_box(b, b̂) of the total loss (`box_regression_loss`), on the student's one box."""
    if targets.box is None:
        return None
    return box_regression_loss(output.box.float(), targets.box.float(), config.box, config.box_beta)


def giou_term(output: Any, targets: LossTargets, config: LossConfig) -> Tensor | None:
    """L_giou(b, b̂) of the total loss (`giou_loss`)."""
    if targets.box is None:
        return None
    return giou_loss(output.box.float(), targets.box.float())


def cell_term(output: Any, targets: LossTargets, config: LossConfig) -> Tensor | None:
    """This kit's L_cell (`target_cell_loss`), when the student has a cell head."""
    if output.cell_logits is None or targets.box is None:
        return None
    return target_cell_loss(output.cell_logits, targets.box.float())


def distill_image_term(output: Any, targets: LossTargets, config: LossConfig) -> Tensor | None:
    """EpmVG's d(VLS, pool(DIE)) (`distillation_loss`), when the batch has image targets."""
    if targets.teacher_image is None:
        return None
    return distillation_loss(output.vls.float(), targets.teacher_image, config.distill, targets.teacher_grad)


def distill_text_term(output: Any, targets: LossTargets, config: LossConfig) -> Tensor | None:
    """EpmVG's d(CLS, pool(DTE)) (`distillation_loss`), when the batch has text targets."""
    if targets.teacher_text is None:
        return None
    return distillation_loss(output.cls.float(), targets.teacher_text, config.distill, targets.teacher_grad)


def layer_box_term(output: Any, targets: LossTargets, config: LossConfig) -> Tensor | None:
    """LGR-NET Eq. 8's Σ_i L_box(b_i, b̂) over the reasoning layers' boxes (`box_regression_loss`
    per layer, summed, not averaged; the paper's L_box is L1: `LossConfig.box="l1"`)."""
    if targets.box is None:
        return None
    target = targets.box.float()
    layers = output.layer_boxes.float()
    return torch.stack(
        [box_regression_loss(boxes, target, config.box, config.box_beta) for boxes in layers]
    ).sum()


def layer_giou_term(output: Any, targets: LossTargets, config: LossConfig) -> Tensor | None:
    """LGR-NET Eq. 8's Σ_i L_giou(b_i, b̂) over the reasoning layers' boxes (`giou_loss` per layer)."""
    if targets.box is None:
        return None
    target = targets.box.float()
    return torch.stack([giou_loss(boxes, target) for boxes in output.layer_boxes.float()]).sum()


def align_term(output: Any, targets: LossTargets, config: LossConfig) -> Tensor:
    """LGR-NET Eq. 9-11's L_align (`info_nce_loss`) over the global batch under DDP
    (`gather_across_ranks`). Computed even at weight 0, so that its parameters get a (zero)
    gradient, which DDP needs."""
    f_obj, f_sent = gather_across_ranks(output.f_obj), gather_across_ranks(output.f_sent)
    return info_nce_loss(f_obj, f_sent, output.log_temperature)


def align_batch(output: Any) -> Tensor:
    """How many (object, sentence) pairs L_align compared: the global batch under DDP."""
    import torch.distributed as dist

    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    # A fill on the device (the count is a kernel argument): `torch.tensor(..., device=cuda)` would
    # copy from the host every step.
    return output.f_obj.new_full((), float(world * len(output.f_obj)), dtype=torch.float32)


class Criterion(nn.Module):
    """DETR's `SetCriterion` for one student: its named terms, weighted by `weight_dict`.

    `forward` returns (losses, diagnostics): the unweighted terms that applied, with their weighted
    sum under "total", and the diagnostics. Terms are summed in the order the student declares them.
    """

    def __init__(
        self,
        terms: Mapping[str, LossTerm],
        config: LossConfig | None = None,
        diagnostics: Mapping[str, Diagnostic] | None = None,
    ) -> None:
        super().__init__()
        self.config = config or LossConfig()
        self.weight_dict = self.config.weight_dict()
        unknown = sorted(set(terms) - set(LossConfig().weight_dict()))
        if unknown:
            raise ValueError(f"loss terms {unknown} have no weight in LossConfig.weight_dict()")
        self.terms = {name: term for name, term in terms.items() if name in self.weight_dict}
        self.diagnostics = dict(diagnostics or {})

    def forward(self, output: Any, targets: LossTargets) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        losses: dict[str, Tensor] = {}
        total: Tensor | None = None
        for name, term in self.terms.items():
            value = term(output, targets, self.config)
            if value is None:
                continue
            losses[name] = value
            weighted = self.weight_dict[name] * value
            total = weighted if total is None else total + weighted
        if total is None:
            raise ValueError(f"no loss term applied to this batch (terms: {sorted(self.terms)})")
        losses["total"] = total
        diagnostics = {name: diagnostic(output).detach() for name, diagnostic in self.diagnostics.items()}
        return losses, diagnostics


TRANSVG_TERMS: dict[str, LossTerm] = {
    "box": box_term,
    "giou": giou_term,
    "cell": cell_term,
    "distill_image": distill_image_term,
    "distill_text": distill_text_term,
}
LGRNET_TERMS: dict[str, LossTerm] = {
    "box": layer_box_term,
    "giou": layer_giou_term,
    "align": align_term,
    "distill_image": distill_image_term,
    "distill_text": distill_text_term,
}
LGRNET_DIAGNOSTICS: dict[str, Diagnostic] = {"align_batch": align_batch}
