"""The student's configuration and its named presets (JSON files in pipeline/configs/student/).

- transvg-r50: the paper's student (ResNet-50 + BERT-base, 640 px); needs the hub or local weights.
- transvg-r50-random: the same architecture with random weights, buildable offline (BERT-base's shape
  from MiniLM's config, which shares BERT-base-uncased's vocabulary and tokenizer); for speed benchmarks.
- small: EfficientNet-Lite0 + MiniLM-L6 from the weights shipped as Python packages; a CPU demo at 160 px.
- tiny: random test_resnet + a random 2-layer 64-wide BERT with MiniLM's real tokenizer, 128 px; for
  tests. Its BatchNorm is left trainable: random weights have no statistics worth freezing.
- lgrnet-r50: LGR-NET (Lu et al., TCSVT 2024) in the paper's shape, random weights, buildable offline
  (as transvg-r50-random); lgrnet-shapes: a CPU-sized LGR-NET for the shapes data (frozen packaged
  EfficientNet-Lite0 + MiniLM, as `shapes`); lgrnet-tiny: random and tiny, for tests.

`architecture` picks the model class (`pipeline/student/registry.py`, the one list of students); the
other fields are shared where both students have the part (backbone, text encoder, width, heads, FFN,
dropout, input size).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from pipeline.config_fields import parse_assignments
from pipeline.student.registry import STUDENTS

PRESET_PACKAGE = "pipeline"
PRESET_FOLDER = ("configs", "student")
VISUAL_POSITIONS = ("attention", "tokens")
COORD_FUSIONS = ("add", "concat")


@dataclass
class StudentConfig:
    """TransVG student; the defaults are the paper's (ResNet-50 + BERT-base, 640 px, D=256).

    backbone_weights: "timm" (timm's pretrained download), "package" (weights shipped by a Python
    package, see `weights.py`), "none" (random), or a path to a state-dict file.
    text_encoder: a Hugging Face hub id or a local folder; text_encoder_weights "none" builds the same
    architecture, modified by `text_config_overrides`, with random weights (its tokenizer stays real).
    frozen_backbone_stages: leading timm feature levels (stem level first) kept frozen; 2 = stem and
    layer1 of a ResNet, which is what DETR/TransVG freeze.
    backbone_out_index: the timm feature level fed to the visual encoder; -1 = the last (stride 32, as
    in TransVG), -2 = stride 16 (a finer grid for small inputs).
    visual_init: a DETR checkpoint whose backbone, input projection and encoder initialise the visual
    branch, as TransVG does (its detr-r50-<dataset>.pth); None = ImageNet backbone, random encoder.
    freeze_text_encoder: keep the text encoder's weights fixed (and its dropout off).
    visual_position: where the visual encoder's sine positions go. "attention" (TransVG, DETR): added
    to queries and keys at every layer, never to the values. "tokens": also added once to the
    layer-normalised input tokens (ViT-style), so the values, and the [REG] token that pools them,
    carry where each cell is.
    cell_head: a linear head on the fusion's visual output tokens that says, per cell, whether the
    cell's centre lies in the referred box; trained by `target_cell_loss` (not in TransVG or EpmVG:
    a dense auxiliary that lets a small CPU budget learn which object the text means).
    backbone_options: extra keyword arguments to timm.create_model (e.g. a small Swin's embed_dim,
    depths, num_heads, img_size, window_size); channels-last (NHWC) feature maps are accepted.
    architecture: a name in `pipeline/student/registry.py`, "transvg" or "lgrnet" (see
    `pipeline/student/lgrnet.py`). LGR-NET reads vl_layers as
    its N reasoning layers and ignores visual_layers, backbone_out_index and visual_position (it has
    no visual encoder and always takes the last three feature levels, strides 8/16/32).
    coord_embedding, coord_fusion, prediction_tokens: LGR-NET only. coord_embedding=False drops the
    TFE coordinate (Eq. 1) from the prediction token's query and key; coord_fusion "add" adds
    p_coord to them (the paper), "concat" concatenates it and projects back to D per layer;
    prediction_tokens: how many learnable prediction tokens (the box comes from their mean).
    """

    architecture: str = "transvg"

    backbone: str = "resnet50"
    backbone_options: dict[str, Any] = field(default_factory=dict)
    backbone_weights: str = "timm"
    frozen_backbone_stages: int = 2
    backbone_out_index: int = -1
    freeze_bn: bool = True  # DETR/TransVG use FrozenBatchNorm2d: batches are small and padded
    channels_last: bool = False
    visual_init: str | None = None
    text_encoder: str = "bert-base-uncased"
    text_encoder_weights: str = "pretrained"
    text_layers_used: int | None = None  # keep only the first N text-encoder layers; None = all
    freeze_text_encoder: bool = False  # the paper fine-tunes BERT (at lr 1e-5)
    text_config_overrides: dict[str, Any] = field(default_factory=dict)
    hidden_dim: int = 256
    visual_layers: int = 6
    vl_layers: int = 6
    heads: int = 8
    ffn_dim: int = 2048
    dropout: float = 0.1
    max_query_len: int = 20
    image_size: int = 640
    visual_position: str = "attention"
    cell_head: bool = False
    coord_embedding: bool = True
    coord_fusion: str = "add"
    prediction_tokens: int = 1

    def __post_init__(self) -> None:
        if self.architecture not in STUDENTS:  # the registry: a bad name fails while parsing a config
            raise ValueError(f"architecture must be one of {tuple(STUDENTS)}, not {self.architecture!r}")
        if self.coord_fusion not in COORD_FUSIONS:
            raise ValueError(f"coord_fusion must be one of {COORD_FUSIONS}, not {self.coord_fusion!r}")
        if self.prediction_tokens < 1:
            raise ValueError(f"prediction_tokens must be positive, not {self.prediction_tokens}")
        if self.architecture == "lgrnet" and (self.cell_head or self.visual_init):
            # Both attach to TransVG's parts (its fusion's visual tokens, its DETR encoder).
            raise ValueError("cell_head and visual_init are TransVG options; LGR-NET has neither part")
        if self.hidden_dim % self.heads:
            raise ValueError(f"hidden_dim {self.hidden_dim} is not divisible by heads {self.heads}")
        if self.text_encoder_weights not in ("pretrained", "none"):
            raise ValueError(
                f"text_encoder_weights must be 'pretrained' or 'none', not {self.text_encoder_weights!r}"
            )
        if self.visual_position not in VISUAL_POSITIONS:
            raise ValueError(
                f"visual_position must be one of {VISUAL_POSITIONS}, not {self.visual_position!r}"
            )
        if self.text_layers_used is not None and self.text_layers_used < 1:
            raise ValueError(f"text_layers_used must be >= 1 or None, not {self.text_layers_used}")
        for name in ("image_size", "max_query_len", "hidden_dim", "vl_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, not {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict; checkpoints carry it so a model can be rebuilt without its preset."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> StudentConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown StudentConfig fields {unknown}; known fields: {sorted(known)}")
        return cls(**values)


def _preset_dir():
    return resources.files(PRESET_PACKAGE).joinpath(*PRESET_FOLDER)


def list_student_presets() -> list[str]:
    return sorted(
        entry.name.removesuffix(".json") for entry in _preset_dir().iterdir() if entry.name.endswith(".json")
    )


def student_preset(name: str, **overrides: Any) -> StudentConfig:
    """The named preset (transvg-r50, small, tiny) with `overrides` applied on top."""
    entry = _preset_dir().joinpath(f"{name}.json")
    if not entry.is_file():
        raise ValueError(f"unknown student preset {name!r}; available: {list_student_presets()}")
    return StudentConfig.from_dict({**json.loads(entry.read_text()), **overrides})


def parse_field_assignments(assignments: Sequence[str]) -> dict[str, Any]:
    """`["backbone_out_index=-2", "visual_init=none"]` → typed StudentConfig overrides.

    Each value is converted to its field's annotated type (`pipeline/config_fields.py`), so a typo'd
    field or a value of the wrong type fails here, before a model or a data loader is built.
    """
    return parse_assignments(StudentConfig, assignments)
