"""TransVG (Deng et al., ICCV 2021), the EpmVG student: [REG] + visual + text tokens → one box.

The model also returns [VLS] (first visual output token) and [CLS] (first text output token) of the
visual-linguistic transformer, which the EpmVG distillation pulls toward the teacher's image and text
embeddings.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torchvision.ops import MLP

from pipeline.student.backbone import build_backbone
from pipeline.student.config import StudentConfig
from pipeline.student.detr import load_detr_visual_weights
from pipeline.student.position import sine_position_encoding
from pipeline.student.text import build_text_encoder
from pipeline.student.transformer import Encoder


class StudentOutput(NamedTuple):
    box: Tensor  # [B, 4] normalised (cx, cy, w, h) in (0, 1)
    vls: Tensor  # [B, D]
    cls: Tensor  # [B, D]
    cell_logits: Tensor | None = None  # [B, h·w] "is this cell inside the box?" (config.cell_head)
    # LGR-NET only (pipeline/student/lgrnet.py):
    layer_boxes: Tensor | None = None  # [N, B, 4] one box per reasoning layer; box = layer_boxes[-1]
    f_obj: Tensor | None = None  # [B, D] FFN_obj(prediction token), L_align's object side
    f_sent: Tensor | None = None  # [B, D] FFN_S(text [CLS]), L_align's sentence side (Eq. 2)
    coord: Tensor | None = None  # [B, 2] the TFE's (x, y) of the referent (Eq. 1); None when off
    log_temperature: Tensor | None = None  # [] log τ of L_align, learnable


class FusionInputs(NamedTuple):
    """The visual-linguistic transformer's input: [REG] + visual + text tokens."""

    tokens: Tensor  # [B, 1 + V + L, D]
    pos: Tensor  # [B, 1 + V + L, D], added to queries and keys only
    pad_mask: Tensor  # [B, 1 + V + L], True = padding
    visual_count: int  # V: visual tokens sit at 1 .. V, text tokens after them


class StudentBase(nn.Module):
    """What every student shares: a text encoder read the same way, and frozen branches kept in eval
    mode. A subclass has `config`, `backbone` and `text_encoder`."""

    config: StudentConfig
    backbone: nn.Module
    text_encoder: nn.Module

    def text_states(self, token_ids: Tensor, token_mask: Tensor) -> Tensor:
        """The text encoder's token states [B, L, H] (before the projection to D)."""
        if token_ids.shape[1] > self.config.max_query_len:
            raise ValueError(f"{token_ids.shape[1]} tokens exceed max_query_len={self.config.max_query_len}")
        return self.text_encoder(input_ids=token_ids, attention_mask=token_mask.long()).last_hidden_state

    @property
    def input_branches(self) -> tuple[nn.Module, nn.Module]:
        """The backbone and the text encoder: the branches `backbone_features` and `text_states` run."""
        return self.backbone, self.text_encoder

    @property
    def precomputable(self) -> bool:
        """Whether the backbone and the text encoder are both frozen, so that their outputs for an
        un-augmented input never change and can be computed once per image and per text."""
        return not any(p.requires_grad for branch in self.input_branches for p in branch.parameters())

    def train(self, mode: bool = True) -> StudentBase:
        """A branch with no trainable weight stays in eval mode: no dropout and no batch statistics, so
        its output is a pure function of its input (and a precomputed table stays exact)."""
        super().train(mode)
        for branch in self.input_branches:
            if not any(p.requires_grad for p in branch.parameters()):
                branch.eval()
        return self


class TransVG(StudentBase):
    """forward(pixels [B,3,S,S], pixel_mask [B,S,S] True=pad, token_ids [B,L], token_mask [B,L] True=real)."""

    def __init__(self, config: StudentConfig, pretrained: bool = True) -> None:
        super().__init__()
        self.config = config
        dim = config.hidden_dim
        # Visual branch: DETR without its decoder.
        self.backbone = build_backbone(config, pretrained)
        self.input_proj = nn.Conv2d(self.backbone.num_channels, dim, kernel_size=1)
        # "tokens": LayerNorm'd tokens plus their sine position (ViT-style), so positions reach the values.
        self.input_norm = nn.LayerNorm(dim) if config.visual_position == "tokens" else nn.Identity()
        self.visual_encoder = Encoder(dim, config.heads, config.ffn_dim, config.dropout, config.visual_layers)
        self.visual_proj = nn.Linear(dim, dim)
        # Linguistic branch.
        self.text_encoder = build_text_encoder(config, pretrained)
        self.text_encoder.requires_grad_(not config.freeze_text_encoder)
        self.text_proj = nn.Linear(self.text_encoder.config.hidden_size, dim)
        # Visual-linguistic fusion: one learned position per [REG], visual cell and text slot.
        self.grid_size = math.ceil(config.image_size / self.backbone.stride)
        self.reg_token = nn.Embedding(1, dim)
        self.vl_pos = nn.Embedding(1 + self.grid_size**2 + config.max_query_len, dim)
        self.vl_encoder = Encoder(dim, config.heads, config.ffn_dim, config.dropout, config.vl_layers)
        self.box_head = MLP(dim, [dim, dim, 4])
        self.cell_head = nn.Linear(dim, 1) if config.cell_head else None
        if pretrained and config.visual_init:
            load_detr_visual_weights(self, Path(config.visual_init))

    def forward(
        self,
        pixels: Tensor | None = None,
        pixel_mask: Tensor | None = None,
        token_ids: Tensor | None = None,
        token_mask: Tensor | None = None,
        *,
        backbone_features: Tensor | None = None,
        feature_pad: Tensor | None = None,
        text_states: Tensor | None = None,
    ) -> StudentOutput:
        """The box for (pixels, tokens); or, when the frozen branches' outputs were computed once
        (`precomputed_inputs`), for (backbone_features, feature_pad, text_states, token_mask)."""
        inputs = self.fusion_inputs(
            pixels,
            pixel_mask,
            token_ids,
            token_mask,
            backbone_features=backbone_features,
            feature_pad=feature_pad,
            text_states=text_states,
        )
        fused = self.vl_encoder(inputs.tokens, inputs.pos, inputs.pad_mask)
        # fp32 head and sigmoid under bf16 autocast: bf16 keeps 8 bits of mantissa, about 0.4% of the
        # image per coordinate near 1, which is visible in IoU on small objects.
        with torch.autocast(fused.device.type, enabled=False):
            box = self.box_head(fused[:, 0].float()).sigmoid()
        visual = fused[:, 1 : 1 + inputs.visual_count]
        cells = self.cell_head(visual).squeeze(-1) if self.cell_head is not None else None
        return StudentOutput(
            box=box, vls=fused[:, 1], cls=fused[:, 1 + inputs.visual_count], cell_logits=cells
        )

    def fusion_inputs(
        self,
        pixels: Tensor | None,
        pixel_mask: Tensor | None,
        token_ids: Tensor | None,
        token_mask: Tensor,
        *,
        backbone_features: Tensor | None = None,
        feature_pad: Tensor | None = None,
        text_states: Tensor | None = None,
    ) -> FusionInputs:
        """Encode both branches and lay out [REG] + visual + text with their positions and padding."""
        if backbone_features is None:
            backbone_features, feature_pad = self.backbone_features(pixels, pixel_mask)
        if text_states is None:
            text_states = self.text_states(token_ids, token_mask)
        visual, visual_pad, grid_hw = self.visual_tokens(backbone_features, feature_pad)
        text = self.text_proj(text_states)
        reg = self.reg_token.weight.expand(visual.shape[0], 1, -1)
        tokens = torch.cat([reg, visual, text], dim=1)
        pad_mask = torch.cat([torch.zeros_like(visual_pad[:, :1]), visual_pad, ~token_mask], dim=1)
        pos = self.vl_pos(self.vl_position_ids(grid_hw, text.shape[1], visual.device))
        return FusionInputs(tokens, pos.unsqueeze(0).expand_as(tokens), pad_mask, visual.shape[1])

    def backbone_features(self, pixels: Tensor, pixel_mask: Tensor) -> tuple[Tensor, Tensor]:
        """The CNN's feature map [B, C, h, w] and its padding mask [B, h, w]."""
        # TransVG pads with the mean colour (0 after normalisation); forcing it here makes the output
        # independent of whatever a loader left in the padding.
        pixels = pixels.masked_fill(pixel_mask[:, None], 0.0)
        if self.config.channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        features, feature_pad = self.backbone(pixels, pixel_mask)
        height, width = features.shape[-2:]
        if height > self.grid_size or width > self.grid_size:
            raise ValueError(
                f"a {pixels.shape[-2]}x{pixels.shape[-1]} input gives a {height}x{width} feature map, "
                f"larger than the {self.grid_size}x{self.grid_size} positions of "
                f"image_size={self.config.image_size}"
            )
        return features, feature_pad

    def visual_tokens(self, features: Tensor, feature_pad: Tensor) -> tuple[Tensor, Tensor, tuple[int, int]]:
        """Visual tokens [B, h·w, D], their padding mask [B, h·w] and the grid size (h, w)."""
        height, width = features.shape[-2:]
        tokens = self.input_proj(features).flatten(2).transpose(1, 2)
        pad = feature_pad.flatten(1)
        pos = sine_position_encoding(feature_pad, tokens.shape[-1]).flatten(1, 2).to(tokens.dtype)
        if self.config.visual_position == "tokens":
            tokens = self.input_norm(tokens) + pos
        return self.visual_proj(self.visual_encoder(tokens, pos, pad)), pad, (height, width)

    def encode_image(self, pixels: Tensor, pixel_mask: Tensor) -> tuple[Tensor, Tensor, tuple[int, int]]:
        """Visual tokens [B, h·w, D], their padding mask [B, h·w] and the grid size (h, w)."""
        return self.visual_tokens(*self.backbone_features(pixels, pixel_mask))

    def encode_text(self, token_ids: Tensor, token_mask: Tensor) -> Tensor:
        """Text tokens [B, L, D]."""
        return self.text_proj(self.text_states(token_ids, token_mask))

    def vl_position_ids(self, grid_hw: tuple[int, int], text_len: int, device: torch.device) -> Tensor:
        """Rows of `vl_pos` for [REG], the h×w visual cells and the text slots.

        Cells index a fixed grid_size² table row-major, so a smaller input reuses the top-left positions.
        """
        height, width = grid_hw
        rows = torch.arange(height, device=device)[:, None] * self.grid_size
        cells = (rows + torch.arange(width, device=device)).flatten()
        slots = torch.arange(text_len, device=device)
        reg = torch.zeros(1, dtype=torch.long, device=device)
        return torch.cat([reg, 1 + cells, 1 + self.grid_size**2 + slots])


def param_groups(
    model: StudentBase, lr: float = 1e-4, lr_pretrained: float = 1e-5, weight_decay: float = 1e-4
) -> list[dict[str, Any]]:
    """AdamW groups: pretrained backbone and text encoder at `lr_pretrained`, the rest at `lr`.

    Any student: parameters are grouped by their top-level module, `backbone` and `text_encoder`.
    A branch built with random weights ("none") trains at `lr`; frozen parameters are left out. With a
    DETR initialisation the visual transformer (input projection and encoder) is pretrained too, and
    trains at `lr_pretrained` as in TransVG.
    """
    config = model.config
    pretrained = {
        "backbone": config.backbone_weights != "none" or bool(config.visual_init),
        "visual_transformer": bool(config.visual_init),
        "text_encoder": config.text_encoder_weights != "none",
    }
    visual_transformer = ("input_proj", "visual_encoder") if config.visual_init else ()
    branch_group = dict.fromkeys(visual_transformer, "visual_transformer")
    groups: dict[str, list[nn.Parameter]] = {name: [] for name in (*pretrained, "head")}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            branch = name.split(".", 1)[0]
            branch = branch_group.get(branch, branch)
            groups[branch if branch in pretrained else "head"].append(parameter)
    return [
        {
            "name": name,
            "params": parameters,
            "lr": lr_pretrained if pretrained.get(name, False) else lr,
            "weight_decay": weight_decay,
        }
        for name, parameters in groups.items()
        if parameters
    ]
