"""TransVG (Deng et al., ICCV 2021), the EpmVG student: [REG] + visual + text tokens → one box.

The model also returns [VLS] (first visual output token) and [CLS] (first text output token) of the
visual-linguistic transformer, which the EpmVG distillation pulls toward the teacher's image and text
embeddings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torchvision.ops import MLP

from pipeline.student.backbone import build_backbone
from pipeline.student.config import StudentConfig
from pipeline.student.detr import load_detr_visual_weights
from pipeline.student.output import StudentOutput, TransVGOutput
from pipeline.student.position import sine_position_encoding
from pipeline.student.text import build_text_encoder
from pipeline.student.transformer import Encoder


class FusionInputs(NamedTuple):
    """The visual-linguistic transformer's input: [REG] + visual + text tokens."""

    tokens: Tensor  # [B, 1 + V + L, D]
    pos: Tensor  # [B, 1 + V + L, D], added to queries and keys only
    pad_mask: Tensor  # [B, 1 + V + L], True = padding
    visual_count: int  # V: visual tokens sit at 1 .. V, text tokens after them


@dataclass(frozen=True)
class Branch:
    """A part of a student that may start from pretrained weights: its modules, and whether they do
    under the student's config (then `param_groups` gives them `lr_pretrained`)."""

    modules: tuple[nn.Module, ...]
    pretrained: bool


class StudentBase(nn.Module):
    """What every student shares: the forward template (both input layouts resolved once, then the
    student's `head`), a text encoder read the same way, frozen branches kept in eval mode, and its
    pretrained branches declared for `param_groups`. A subclass has `config`, `backbone` and
    `text_encoder`, and implements `backbone_features`, `head` and `prediction_attention`."""

    config: StudentConfig
    backbone: nn.Module
    text_encoder: nn.Module

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
        """forward(pixels [B,3,S,S], pixel_mask [B,S,S] True=pad, token_ids [B,L], token_mask [B,L]
        True=real); or, when the frozen branches' outputs were computed once (`precomputed_inputs`),
        forward(backbone_features=, feature_pad=, text_states=, token_mask=)."""
        features, pad, states = self.resolve_inputs(
            pixels, pixel_mask, token_ids, token_mask, backbone_features, feature_pad, text_states
        )
        return self.head(features, pad, states, token_mask)

    def resolve_inputs(
        self,
        pixels: Tensor | None,
        pixel_mask: Tensor | None,
        token_ids: Tensor | None,
        token_mask: Tensor,
        backbone_features: Tensor | None = None,
        feature_pad: Tensor | None = None,
        text_states: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(backbone features, their padding, text states): run the frozen-able branches on whatever
        was not given precomputed (backbone first, then the text encoder)."""
        if backbone_features is None:
            backbone_features, feature_pad = self.backbone_features(pixels, pixel_mask)
        if text_states is None:
            text_states = self.text_states(token_ids, token_mask)
        return backbone_features, feature_pad, text_states

    def backbone_features(self, pixels: Tensor, pixel_mask: Tensor) -> tuple[Tensor, Tensor]:
        """The frozen-able visual part's output [B, C, h, w] and its padding mask [B, h, w]."""
        raise NotImplementedError

    def head(
        self, features: Tensor, feature_pad: Tensor, text_states: Tensor, token_mask: Tensor
    ) -> StudentOutput:
        """Everything after the backbone and the text encoder."""
        raise NotImplementedError

    def prediction_attention(
        self, features: Tensor, feature_pad: Tensor, text_states: Tensor, token_mask: Tensor
    ) -> dict[str, Tensor]:
        """For `epmvg diagnose`: where the token that predicts the box ([REG], LGR-NET's prediction
        token) attends in the first layer that mixes it with the other tokens, as shares [B] on
        "self", "visual" and "text" tokens (averaged over heads; they sum to 1)."""
        raise NotImplementedError

    def backbone_input(self, pixels: Tensor, pixel_mask: Tensor) -> Tensor:
        """Pixels with the padding at the mean colour (0 after normalisation, as TransVG pads), which
        makes the output independent of whatever a loader left there; channels-last if configured."""
        pixels = pixels.masked_fill(pixel_mask[:, None], 0.0)
        if self.config.channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        return pixels

    def text_states(self, token_ids: Tensor, token_mask: Tensor) -> Tensor:
        """The text encoder's token states [B, L, H] (before the projection to D)."""
        if token_ids.shape[1] > self.config.max_query_len:
            raise ValueError(f"{token_ids.shape[1]} tokens exceed max_query_len={self.config.max_query_len}")
        return self.text_encoder(input_ids=token_ids, attention_mask=token_mask.long()).last_hidden_state

    def pretrained_branches(self) -> dict[str, Branch]:
        """Group name → the branch's modules, in `param_groups`' order; everything else is "head".
        Every student: the backbone and the text encoder."""
        config = self.config
        return {
            "backbone": Branch((self.backbone,), config.backbone_weights != "none"),
            "text_encoder": Branch((self.text_encoder,), config.text_encoder_weights != "none"),
        }

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
    """[REG] + visual tokens (CNN + transformer encoder) + text tokens → fusion transformer → box."""

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

    def pretrained_branches(self) -> dict[str, Branch]:
        """The backbone, the visual transformer (input projection and encoder: pretrained only with a
        DETR initialisation, as in TransVG; otherwise they are head) and the text encoder."""
        config = self.config
        detr = bool(config.visual_init)
        return {
            "backbone": Branch((self.backbone,), config.backbone_weights != "none" or detr),
            "visual_transformer": Branch((self.input_proj, self.visual_encoder) if detr else (), detr),
            "text_encoder": Branch((self.text_encoder,), config.text_encoder_weights != "none"),
        }

    def head(
        self, features: Tensor, feature_pad: Tensor, text_states: Tensor, token_mask: Tensor
    ) -> TransVGOutput:
        inputs = self.fusion_inputs(features, feature_pad, text_states, token_mask)
        fused = self.vl_encoder(inputs.tokens, inputs.pos, inputs.pad_mask)
        # fp32 head and sigmoid under bf16 autocast: bf16 keeps 8 bits of mantissa, about 0.4% of the
        # image per coordinate near 1, which is visible in IoU on small objects.
        with torch.autocast(fused.device.type, enabled=False):
            box = self.box_head(fused[:, 0].float()).sigmoid()
        visual = fused[:, 1 : 1 + inputs.visual_count]
        cells = self.cell_head(visual).squeeze(-1) if self.cell_head is not None else None
        return TransVGOutput(
            box=box, vls=fused[:, 1], cls=fused[:, 1 + inputs.visual_count], cell_logits=cells
        )

    def prediction_attention(
        self, features: Tensor, feature_pad: Tensor, text_states: Tensor, token_mask: Tensor
    ) -> dict[str, Tensor]:
        """[REG]'s attention in the first fusion layer."""
        inputs = self.fusion_inputs(features, feature_pad, text_states, token_mask)
        query_key = inputs.tokens + inputs.pos
        attention = self.vl_encoder.layers[0].self_attn
        _, weights = attention(
            query_key, query_key, inputs.tokens, key_padding_mask=inputs.pad_mask, need_weights=True
        )
        reg = weights[:, 0].float()  # [B, tokens], averaged over heads
        visual_end = 1 + inputs.visual_count
        visual, text = reg[:, 1:visual_end].sum(-1), reg[:, visual_end:].sum(-1)
        return {"self": reg[:, 0], "visual": visual, "text": text}

    def fusion_inputs(
        self, features: Tensor, feature_pad: Tensor, text_states: Tensor, token_mask: Tensor
    ) -> FusionInputs:
        """Lay out [REG] + visual + text tokens with their positions and padding."""
        visual, visual_pad, grid_hw = self.visual_tokens(features, feature_pad)
        text = self.text_proj(text_states)
        reg = self.reg_token.weight.expand(visual.shape[0], 1, -1)
        tokens = torch.cat([reg, visual, text], dim=1)
        pad_mask = torch.cat([torch.zeros_like(visual_pad[:, :1]), visual_pad, ~token_mask], dim=1)
        pos = self.vl_pos(self.vl_position_ids(grid_hw, text.shape[1], visual.device))
        return FusionInputs(tokens, pos.unsqueeze(0).expand_as(tokens), pad_mask, visual.shape[1])

    def backbone_features(self, pixels: Tensor, pixel_mask: Tensor) -> tuple[Tensor, Tensor]:
        """The CNN's feature map [B, C, h, w] and its padding mask [B, h, w]."""
        features, feature_pad = self.backbone(self.backbone_input(pixels, pixel_mask), pixel_mask)
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
    """AdamW groups: the student's pretrained branches (`pretrained_branches`) at `lr_pretrained`, the
    rest ("head") at `lr`.

    A branch built with random weights ("none") keeps its group but trains at `lr`; frozen parameters
    are left out; a group without parameters is dropped. Within a group parameters keep the model's
    `parameters()` order.
    """
    branches = model.pretrained_branches()
    owner = {
        id(parameter): name
        for name, branch in branches.items()
        for module in branch.modules
        for parameter in module.parameters()
    }
    groups: dict[str, list[nn.Parameter]] = {name: [] for name in (*branches, "head")}
    for parameter in model.parameters():
        if parameter.requires_grad:
            groups[owner.get(id(parameter), "head")].append(parameter)
    return [
        {
            "name": name,
            "params": parameters,
            "lr": lr_pretrained if name in branches and branches[name].pretrained else lr,
            "weight_decay": weight_decay,
        }
        for name, parameters in groups.items()
        if parameters
    ]
