"""2-D sine position encoding of the visual encoder (DETR's PositionEmbeddingSine, normalised)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def sine_position_encoding(pad_mask: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """Sine/cosine encoding [B, h, w, dim] of each feature-map cell (DETR, Carion et al. 2020).

    pad_mask: [B, h, w] bool, True = padding. Coordinates count valid cells only and are normalised to
    (0, 2π] by the valid extent, so an image's encoding does not depend on how much padding surrounds it.
    The first dim/2 channels encode y, the rest x.
    """
    if dim % 4:
        raise ValueError(f"sine position encoding needs a width divisible by 4, got {dim}")
    valid = (~pad_mask).to(torch.float32)
    y = valid.cumsum(1)
    x = valid.cumsum(2)
    eps = 1e-6
    y = y / (y[:, -1:, :] + eps) * (2 * math.pi)
    x = x / (x[:, :, -1:] + eps) * (2 * math.pi)
    per_axis = dim // 2
    pair_index = torch.arange(per_axis, device=pad_mask.device) // 2  # sin and cos share a frequency
    frequencies = temperature ** (2 * pair_index / per_axis)
    return torch.cat(
        [_interleave_sin_cos(y[..., None] / frequencies), _interleave_sin_cos(x[..., None] / frequencies)], -1
    )


def _interleave_sin_cos(angles: Tensor) -> Tensor:
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)
