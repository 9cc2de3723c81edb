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


def sine_coordinate_embedding(coords: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """LGR-NET Eq. 1's p_coord: the sine embedding [..., dim] of normalised points coords [..., 2] = (x, y).

    The same sine/cosine scheme as `sine_position_encoding` (a coordinate in [0, 1] times 2π, the
    first dim/2 channels for y, the rest for x, sin and cos interleaved), so the predicted coordinate
    and the visual cells' positions live in one embedding space. (0.5, 0.5) at dim=4 is
    [sin π, cos π, sin π, cos π] = [0, −1, 0, −1].
    """
    if dim % 4:
        raise ValueError(f"sine coordinate embedding needs a width divisible by 4, got {dim}")
    per_axis = dim // 2
    pair_index = torch.arange(per_axis, device=coords.device) // 2
    frequencies = temperature ** (2 * pair_index / per_axis)
    angles = coords.float()[..., None] * (2 * math.pi) / frequencies  # [..., 2, per_axis]
    x, y = angles[..., 0, :], angles[..., 1, :]
    return torch.cat([_interleave_sin_cos(y), _interleave_sin_cos(x)], -1)
