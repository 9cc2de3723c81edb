"""Initialise the visual branch from a DETR checkpoint, as TransVG does.

TransVG does not train its visual transformer from scratch: backbone, input projection and the 6-layer
encoder come from a DETR-R50 trained on COCO (the authors' `detr-r50-<dataset>.pth` leave out the
images of each dataset's val/test splits). Starting from a random visual encoder instead, on the demo
data the [REG] token learned to rely on the text alone: see "What the demo reaches" in the README.

DETR's names map onto ours one to one: torchvision's ResNet and timm's features-only ResNet share
their parameter names, and DETR's post-norm encoder layer is ours (`linear1/2` → `ffn.0/3`,
`norm1/2` → `attn_norm/ffn_norm`).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch
from torch import nn

VISUAL_PREFIXES = ("backbone.", "input_proj.", "visual_encoder.")
_LAYER_RENAMES = {"linear1.": "ffn.0.", "linear2.": "ffn.3.", "norm1.": "attn_norm.", "norm2.": "ffn_norm."}
_ENCODER_LAYER = re.compile(r"^transformer\.encoder\.layers\.(\d+)\.(.+)$")


class DetrWeightsError(ValueError):
    """The DETR checkpoint is unreadable or does not fit the student's visual branch."""


def detr_to_student_key(key: str) -> str | None:
    """Our name for a DETR parameter, or None for the parts TransVG does not use (decoder, heads)."""
    if key.startswith("backbone.0.body."):
        return "backbone.body." + key.removeprefix("backbone.0.body.")
    if key.startswith("input_proj."):
        return key
    match = _ENCODER_LAYER.match(key)
    if match is None:
        return None
    layer, rest = match.groups()
    for detr_name, ours in _LAYER_RENAMES.items():
        if rest.startswith(detr_name):
            rest = ours + rest.removeprefix(detr_name)
            break
    return f"visual_encoder.layers.{layer}.{rest}"


def read_detr_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The model weights of a DETR checkpoint, read without running any pickled code.

    DETR's training script saves {"model", "optimizer", "lr_scheduler", "epoch", "args"}; its `args`
    is an argparse.Namespace, the one class allowed besides tensors and containers.
    """
    path = Path(path)
    if not path.is_file():
        raise DetrWeightsError(
            f"no DETR checkpoint at {path}: download TransVG's detr-r50-<dataset>.pth (or DETR's "
            "detr-r50-e632da11.pth) and pass its path"
        )
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the unpickler refuses anything but tensors and plain data
        raise DetrWeightsError(f"{path} is not a readable DETR checkpoint ({error})") from error
    state = payload.get("model", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict):
        raise DetrWeightsError(f"{path} holds no state dict (expected a dict with a 'model' entry)")
    return state


def load_detr_visual_weights(model: nn.Module, path: Path) -> None:
    """Copy backbone, input projection and encoder weights of a DETR checkpoint into `model`.

    Every parameter and buffer of those three parts must be covered with the right shape; anything
    else (a different backbone, fewer encoder layers than `visual_layers`) is a clear error.
    """
    renamed = {}
    for key, value in read_detr_state_dict(path).items():
        ours = detr_to_student_key(key)
        if ours is not None:
            renamed[ours] = value
    targets = {
        key: value
        for key, value in model.state_dict().items()
        if key.startswith(VISUAL_PREFIXES) and not key.endswith("num_batches_tracked")
    }
    missing = sorted(set(targets) - set(renamed))
    if missing:
        raise DetrWeightsError(
            f"{path} lacks {len(missing)} visual-branch weights of this student, e.g. {missing[:3]} "
            "(DETR-R50 fits backbone 'resnet50', hidden_dim 256 and up to 6 visual_layers)"
        )
    wrong = [key for key, value in targets.items() if renamed[key].shape != value.shape]
    if wrong:
        key = wrong[0]
        raise DetrWeightsError(
            f"{path}: {len(wrong)} shapes differ, e.g. {key} {tuple(renamed[key].shape)} vs "
            f"{tuple(targets[key].shape)} in the student"
        )
    model.load_state_dict({key: renamed[key] for key in targets}, strict=False)
