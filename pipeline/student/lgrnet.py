"""LGR-NET (Lu et al., "LGR-NET: Language Guided Reasoning Network for Referring Expression
Comprehension", IEEE TCSVT 34(8), 2024), the second student: text-guided prediction token → boxes.

    visual   strides 8/16/32 → 1×1 conv to D → mean-pooled to stride 32, adjacent maps averaged → F4*;
             F5* = 2×2 max-pool of F4*; Nv = (H/32)(W/32) + (H/64)(W/64) tokens (500 at 640 px)
    text     BERT-like encoder (≤ 40 tokens) → D; h_cls = its projected [CLS]
    TFE      coord = sigmoid(FFN_C(h_cls)), p_coord = sine(coord)                          (Eq. 1)
             f_sent = FFN_S(h_cls)                                                          (Eq. 2)
    TCA      X0 = [f_p, f_1 .. f_Nv]; self-attention over them only; p_coord joins f_p's query
             and key at every layer, never the residual stream                             (Eq. 3-5)
    TCF      cross-attention from X to the word features (keys/values: the unmasked text), FFN,
             post-norm                                                                      (Eq. 6)
    head     box_i = sigmoid(MLP_3(f_p after layer i)), one head shared by the N layers     (Eq. 7)
    align    f_obj = FFN_obj(f_p), InfoNCE against f_sent (`pipeline.losses.info_nce_loss`)

Choices where the paper is silent or ambiguous (each covered by a test in tests/test_lgrnet.py):

- Visual positions: DETR's 2-D sine encoding of each scale's own grid (`sine_position_encoding`),
  plus a learned per-scale embedding (F4* vs F5*), added to the visual tokens' queries and keys in
  TCA and to their queries in TCF, never to values. Text keys carry no extra position (BERT's own).
- "Mean pooling and averaging of adjacent maps": each projected level is mean-pooled to the stride-32
  grid, then adjacent levels are averaged finest first, ((P8 + P16)/2 + P32)/2 (`fuse_levels`).
  Because a 1×1 conv and mean pooling are both linear they commute, so the frozen part
  (`backbone_features`) pools the backbone maps first and returns one stride-32 tensor; that keeps
  `--precompute-frozen` and the frozen table unchanged for this student.
- F5*'s max-pool ignores padded cells (a fully padded window is padding at stride 64).
- p_coord is also added to the prediction token's query in TCF (the same query position the
  token has in TCA). coord_fusion="concat" instead feeds [f_p; p_coord] through a per-layer linear
  2D → D to make that query/key.
- prediction_tokens > 1: every prediction token gets p_coord; the box head, f_obj and [VLS]'s
  role use their mean.
- [VLS] for EpmVG's distillation is the first visual output token (as in TransVG); [CLS] is the
  projected text [CLS] h_cls: LGR-NET never sends the text through the fusion.
- The alignment covers the last layer's f_p only; the box loss covers every layer (deep supervision).
- Weight init: Xavier-uniform for every matrix outside the backbone and the text encoder.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import MLP

from pipeline.student.backbone import build_pyramid_backbone
from pipeline.student.config import StudentConfig
from pipeline.student.model import StudentBase
from pipeline.student.output import LGRNetOutput
from pipeline.student.position import sine_coordinate_embedding, sine_position_encoding
from pipeline.student.text import build_text_encoder

INITIAL_TEMPERATURE = 0.07  # L_align's τ at the start, as CLIP


def fuse_levels(levels: list[Tensor]) -> Tensor:
    """F4* of LGR-NET Sec. III-A: projected maps (finest first) mean-pooled to the coarsest grid, then
    adjacent maps averaged finest first: ((P8 + P16)/2 + P32)/2 for three levels.

    levels: [B, D, h_i, w_i] each; returns [B, D, h, w] at the last level's size.
    """
    size = levels[-1].shape[-2:]
    fused = F.adaptive_avg_pool2d(levels[0], size)
    for level in levels[1:]:
        fused = (fused + F.adaptive_avg_pool2d(level, size)) / 2
    return fused


def coarser_scale(features: Tensor, pad: Tensor) -> tuple[Tensor, Tensor]:
    """F5* of LGR-NET Sec. III-A: 2×2 max-pooling of F4* [B, D, h, w] (padded cells left out) and its
    padding mask [B, ⌈h/2⌉, ⌈w/2⌉] (True where every cell of the window is padding)."""
    masked = features.masked_fill(pad[:, None], float("-inf"))
    pooled = F.max_pool2d(masked, 2, ceil_mode=True)
    pooled_pad = -F.max_pool2d(-pad[:, None].float(), 2, ceil_mode=True)[:, 0] > 0.5
    return pooled.masked_fill(pooled_pad[:, None], 0.0), pooled_pad


class TextualFeatureExtender(nn.Module):
    """TFE: the referent's coordinate and its embedding (Eq. 1), and the sentence feature (Eq. 2)."""

    def __init__(self, dim: int, coord_embedding: bool) -> None:
        super().__init__()
        self.coord_ffn = MLP(dim, [dim, 2]) if coord_embedding else None  # FFN_C: 2 linear + ReLU
        self.sentence_ffn = MLP(dim, [dim, dim])  # FFN_S
        self.dim = dim

    def coordinate(self, h_cls: Tensor) -> tuple[Tensor, Tensor] | tuple[None, None]:
        """Eq. 1: coord = sigmoid(FFN_C(h_cls)) [B, 2] = (x, y) and p_coord = sine(coord) [B, D]."""
        if self.coord_ffn is None:
            return None, None
        coord = self.coord_ffn(h_cls).sigmoid()
        return coord, sine_coordinate_embedding(coord, self.dim).to(h_cls.dtype)

    def sentence(self, h_cls: Tensor) -> Tensor:
        """Eq. 2: f_sent = FFN_S(h_cls) [B, D]."""
        return self.sentence_ffn(h_cls)


class ReasoningLayer(nn.Module):
    """One LGR-NET layer: TCA (Eq. 3-5) then TCF (Eq. 6), post-norm, as a DETR decoder layer whose
    queries are the prediction and visual tokens and whose memory is the text."""

    def __init__(self, config: StudentConfig) -> None:
        super().__init__()
        dim, heads, dropout = config.hidden_dim, config.heads, config.dropout
        self.prediction_count = config.prediction_tokens
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(
            nn.Linear(dim, config.ffn_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(config.ffn_dim, dim),
            nn.Dropout(dropout),
        )
        self.dropouts = nn.ModuleList(nn.Dropout(dropout) for _ in range(2))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))
        concat = config.coord_embedding and config.coord_fusion == "concat"
        self.coord_concat = nn.Linear(2 * dim, dim) if concat else None

    def queries(self, tokens: Tensor, pos: Tensor, p_coord: Tensor | None) -> Tensor:
        """Tokens with their query/key position: visual positions, and p_coord on the prediction tokens
        (added, or concatenated and projected back to D)."""
        query = tokens + pos
        if p_coord is None:
            return query
        count = self.prediction_count
        prediction = tokens[:, :count]
        coord = p_coord[:, None].expand_as(prediction)
        if self.coord_concat is not None:
            prediction = self.coord_concat(torch.cat([prediction, coord], dim=-1))
        else:
            prediction = prediction + coord
        return torch.cat([prediction, query[:, count:]], dim=1)

    def forward(
        self, tokens: Tensor, pos: Tensor, pad: Tensor, text: Tensor, text_pad: Tensor, p_coord: Tensor | None
    ) -> Tensor:
        """tokens, pos: [B, P + Nv, D]; pad: [B, P + Nv]; text: [B, L, D]; text_pad: [B, L] (True = pad)."""
        query = self.queries(tokens, pos, p_coord)
        attended = self.self_attn(query, query, tokens, key_padding_mask=pad, need_weights=False)[0]
        tokens = self.norms[0](tokens + self.dropouts[0](attended))
        query = self.queries(tokens, pos, p_coord)
        read = self.cross_attn(query, text, text, key_padding_mask=text_pad, need_weights=False)[0]
        tokens = self.norms[1](tokens + self.dropouts[1](read))
        return self.norms[2](tokens + self.ffn(tokens))


class LGRNet(StudentBase):
    """The same inputs as TransVG (`StudentBase.forward`); an `LGRNetOutput`: the box and [VLS]/[CLS],
    plus per-layer boxes, f_obj, f_sent and coord."""

    def __init__(self, config: StudentConfig, pretrained: bool = True) -> None:
        super().__init__()
        self.config = config
        dim = config.hidden_dim
        self.backbone = build_pyramid_backbone(config, pretrained)
        channels = self.backbone.level_channels
        self.input_proj = nn.ModuleList(nn.Conv2d(c, dim, kernel_size=1) for c in channels)
        self.scale_embed = nn.Parameter(torch.empty(2, dim))  # F4*, F5*
        self.text_encoder = build_text_encoder(config, pretrained)
        self.text_encoder.requires_grad_(not config.freeze_text_encoder)
        self.text_proj = nn.Linear(self.text_encoder.config.hidden_size, dim)
        self.tfe = TextualFeatureExtender(dim, config.coord_embedding)
        self.prediction_tokens = nn.Parameter(torch.empty(config.prediction_tokens, dim))
        self.layers = nn.ModuleList(ReasoningLayer(config) for _ in range(config.vl_layers))
        self.box_head = MLP(dim, [dim, dim, 4])  # Eq. 7, shared by every layer
        self.object_ffn = MLP(dim, [dim, dim])  # FFN_obj of L_align
        self.log_temperature = nn.Parameter(torch.tensor(math.log(INITIAL_TEMPERATURE)))
        self._init_new_parts()

    def _init_new_parts(self) -> None:
        # The backbone and the text encoder keep their (pre)trained or library initialisation.
        for name, parameter in self.named_parameters():
            if name.split(".", 1)[0] in ("backbone", "text_encoder"):
                continue
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)

    def reasoning_inputs(
        self, features: Tensor, feature_pad: Tensor, text_states: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
        """X0 = [prediction tokens, visual tokens] with their positions and padding, the projected
        text, its [CLS] h_cls, and the TFE's coord and p_coord:
        (tokens, pos, pad, text, h_cls, coord, p_coord)."""
        visual, visual_pad, visual_pos = self.visual_tokens(features, feature_pad)
        text = self.text_proj(text_states)
        # One h_cls node for every use (TFE here, [CLS] and f_sent in `head`): two slices of `text`
        # would sum their gradients in another order, changing LGR-NET's losses in the last bit.
        h_cls = text[:, 0]
        coord, p_coord = self.tfe.coordinate(h_cls)
        count = self.config.prediction_tokens
        batch = visual.shape[0]
        tokens = torch.cat([self.prediction_tokens.expand(batch, -1, -1).to(visual.dtype), visual], dim=1)
        pos = torch.cat([torch.zeros_like(tokens[:, :count]), visual_pos], dim=1)
        pad = torch.cat([torch.zeros_like(visual_pad[:, :count]), visual_pad], dim=1)
        return tokens, pos, pad, text, h_cls, coord, p_coord

    def head(
        self, features: Tensor, feature_pad: Tensor, text_states: Tensor, token_mask: Tensor
    ) -> LGRNetOutput:
        tokens, pos, pad, text, h_cls, coord, p_coord = self.reasoning_inputs(
            features, feature_pad, text_states
        )
        count = self.config.prediction_tokens
        boxes = []
        for layer in self.layers:
            tokens = layer(tokens, pos, pad, text, ~token_mask, p_coord)
            boxes.append(self.predict_box(tokens[:, :count].mean(dim=1)))
        f_p = tokens[:, :count].mean(dim=1)
        layer_boxes = torch.stack(boxes)
        return LGRNetOutput(
            box=layer_boxes[-1],
            vls=tokens[:, count],
            cls=h_cls,
            layer_boxes=layer_boxes,
            f_obj=self.object_ffn(f_p),
            f_sent=self.tfe.sentence(h_cls),
            coord=coord,
            log_temperature=self.log_temperature,
        )

    def prediction_attention(
        self, features: Tensor, feature_pad: Tensor, text_states: Tensor, token_mask: Tensor
    ) -> dict[str, Tensor]:
        """The prediction tokens' attention in the first layer's TCA (Eq. 3-5), averaged over them.
        TCA attends over the prediction and visual tokens only (the text enters through TCF's
        cross-attention), so the "text" share is 0 by construction."""
        tokens, pos, pad, _, _, _, p_coord = self.reasoning_inputs(features, feature_pad, text_states)
        layer = self.layers[0]
        query = layer.queries(tokens, pos, p_coord)
        _, weights = layer.self_attn(query, query, tokens, key_padding_mask=pad, need_weights=True)
        count = self.config.prediction_tokens
        prediction = weights[:, :count].float().mean(dim=1)  # [B, P + Nv]
        own = prediction[:, :count].sum(-1)
        return {"self": own, "visual": prediction[:, count:].sum(-1), "text": torch.zeros_like(own)}

    def predict_box(self, f_p: Tensor) -> Tensor:
        """Eq. 7: box = sigmoid(MLP(f_p)) [B, 4] cxcywh, in float32 even under bf16 autocast (see TransVG)."""
        with torch.autocast(f_p.device.type, enabled=False):
            return self.box_head(f_p.float()).sigmoid()

    def backbone_features(self, pixels: Tensor, pixel_mask: Tensor) -> tuple[Tensor, Tensor]:
        """The three backbone levels mean-pooled to the stride-32 grid and stacked on channels
        [B, C8 + C16 + C32, h, w], with the padding mask [B, h, w]: everything before the trainable
        1×1 convs (which commute with the pooling, see the module docstring)."""
        levels, pad = self.backbone(self.backbone_input(pixels, pixel_mask), pixel_mask)
        size = levels[-1].shape[-2:]
        return torch.cat([F.adaptive_avg_pool2d(level, size) for level in levels], dim=1), pad

    def visual_tokens(self, features: Tensor, feature_pad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The Nv visual tokens [B, Nv, D] (F4* cells, then F5* cells), their padding [B, Nv] and their
        query/key positions [B, Nv, D]."""
        levels = features.split(self.backbone.level_channels, dim=1)
        f4 = fuse_levels([proj(level) for proj, level in zip(self.input_proj, levels, strict=True)])
        f5, pad5 = coarser_scale(f4, feature_pad)
        tokens, pads, positions = [], [], []
        for scale, (grid, pad) in enumerate(((f4, feature_pad), (f5, pad5))):
            tokens.append(grid.flatten(2).transpose(1, 2))
            pads.append(pad.flatten(1))
            sine = sine_position_encoding(pad, grid.shape[1]).flatten(1, 2).to(grid.dtype)
            positions.append(sine + self.scale_embed[scale].to(grid.dtype))
        return torch.cat(tokens, dim=1), torch.cat(pads, dim=1), torch.cat(positions, dim=1)

    def encode_text(self, token_ids: Tensor, token_mask: Tensor) -> Tensor:
        """Text tokens [B, L, D], the keys and values of TCF."""
        return self.text_proj(self.text_states(token_ids, token_mask))


def visual_token_count(image_size: int, stride: int = 32) -> int:
    """Nv = ⌈S/32⌉² + ⌈S/64⌉² for a square S-pixel input: 500 at 640 px."""
    fine = math.ceil(image_size / stride)
    return fine**2 + math.ceil(fine / 2) ** 2
