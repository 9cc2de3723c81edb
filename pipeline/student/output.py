"""What a student returns: one base (the box and the two tokens EpmVG's distillation reads) that each
architecture's output extends with its own fields."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class StudentOutput:
    """The part every student gives: the box and the tokens the distillation pulls toward the teacher."""

    box: Tensor  # [B, 4] normalised (cx, cy, w, h) in (0, 1)
    vls: Tensor  # [B, D] [VLS], distilled toward the teacher's image embedding [DIE]
    cls: Tensor  # [B, D] [CLS], distilled toward the teacher's text embedding [DTE]


@dataclass
class TransVGOutput(StudentOutput):
    cell_logits: Tensor | None = None  # [B, h·w] "is this cell inside the box?" (config.cell_head)


@dataclass
class LGRNetOutput(StudentOutput):
    layer_boxes: Tensor  # [N, B, 4] one box per reasoning layer; box = layer_boxes[-1]
    f_obj: Tensor  # [B, D] FFN_obj(prediction token), L_align's object side
    f_sent: Tensor  # [B, D] FFN_S(text [CLS]), L_align's sentence side (Eq. 2)
    coord: Tensor | None = None  # [B, 2] the TFE's (x, y) of the referent (Eq. 1); None when off
    log_temperature: Tensor | None = None  # [] log τ of L_align, learnable
