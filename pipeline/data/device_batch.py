"""A loader batch's pixels made ready on the training device: the one place pixels become the student's.

Loader workers ship uint8 (`"workers"` augmentation: content padded into uint8 [B, 3, S, S] with each
item's size and offsets) or the image files' bytes with each item's augmentation row (`"device"`:
decoded and augmented here, on the device). `to_device_batch` turns either into what the student
reads, as before: `"pixels"` float32 [B, 3, S, S] normalised to the config's mean/std with padding 0
(the mean colour), and `"pixel_mask"` bool [B, S, S], True = padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision.transforms.v2 import functional as F

from pipeline.data.decode import EncodedImage, decode_images
from pipeline.data.transforms import (
    AugmentParams,
    TransformConfig,
    TransformedSample,
    augment_geometry,
    augment_pixels,
)

AUGMENT_ON = ("auto", "device", "workers")
# A "device" batch's fields that only the pixel step reads: gone once the pixels are made.
_DEVICE_ONLY = ("encoded", "image_path", "augment_params", "source_box")


def resolve_augment_on(augment_on: str, device: torch.device) -> str:
    """ "device" or "workers": where the augmentation's pixel step runs ("auto": the device on CUDA)."""
    if augment_on not in AUGMENT_ON:
        raise ValueError(f"augment_on must be one of {', '.join(AUGMENT_ON)}, got {augment_on!r}")
    if augment_on == "auto":
        return "device" if device.type == "cuda" else "workers"
    return augment_on


def pad_uint8(
    contents: Sequence[torch.Tensor], offsets: Sequence[tuple[int, int]], size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Contents (uint8 [3, h_i, w_i]) placed at their (top, left) in a uint8 [B, 3, S, S] square (zeros
    elsewhere), with sizes long [B, 2] (h, w) and offsets long [B, 2] (top, left), on the contents'
    device."""
    device = contents[0].device if contents else torch.device("cpu")
    square = torch.zeros((len(contents), 3, size, size), dtype=torch.uint8, device=device)
    for i, (content, (top, left)) in enumerate(zip(contents, offsets, strict=True)):
        height, width = content.shape[-2:]
        square[i, :, top : top + height, left : left + width] = content
    sizes = torch.tensor([tuple(c.shape[-2:]) for c in contents], dtype=torch.long).view(-1, 2)
    return square, sizes, torch.tensor(list(offsets), dtype=torch.long).view(-1, 2)


def normalize_padded(
    square: torch.Tensor,
    sizes: torch.Tensor,
    offsets: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [B, 3, S, S] (content at offsets, of sizes) -> (float32 [B, 3, S, S] normalised, padding 0;
    bool [B, S, S] True = padding), on `square`'s device."""
    size = square.shape[-1]
    sizes, offsets = sizes.to(square.device), offsets.to(square.device)
    grid = torch.arange(size, device=square.device)
    top, left = offsets[:, :1], offsets[:, 1:]
    rows_out = (grid < top) | (grid >= top + sizes[:, :1])  # [B, S]
    cols_out = (grid < left) | (grid >= left + sizes[:, 1:])
    mask = rows_out[:, :, None] | cols_out[:, None, :]
    pixels = F.normalize(F.to_dtype(square, torch.float32, scale=True), list(mean), list(std))
    return pixels.masked_fill(mask[:, None], 0.0), mask


def sample_pixels(
    sample: TransformedSample, mean: Sequence[float], std: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One sample as the student receives it, on the CPU (float32 [3, S, S], bool [S, S]): the same
    function as a batch's on the device."""
    square, sizes, offsets = pad_uint8([sample.pixels], [sample.offsets], sample.size)
    pixels, mask = normalize_padded(square, sizes, offsets, mean, std)
    return pixels[0], mask[0]


def augment_on_device(batch: dict[str, Any], config: TransformConfig, device: torch.device) -> torch.Tensor:
    """The "device" batch's files decoded and augmented on `device`: uint8 [B, 3, S, S] content at its
    offsets (the same `augment_pixels` the workers run, so the pixels are the workers' on one device)."""
    encoded = [EncodedImage(data, tuple(size), fmt) for data, size, fmt in batch["encoded"]]
    images = decode_images(encoded, batch["image_path"], device)
    contents, offsets = [], []
    for image, row, box in zip(images, batch["augment_params"].tolist(), batch["source_box"], strict=True):
        params = AugmentParams.from_row(row)
        geometry = augment_geometry((image.shape[-1], image.shape[-2]), box, params, config)
        contents.append(augment_pixels(image, params, geometry))
        offsets.append(geometry.offsets)
    return pad_uint8(contents, offsets, config.image_size)[0]


def to_device_batch(batch: dict[str, Any], config: TransformConfig, device: torch.device) -> dict[str, Any]:
    """The batch with `"pixels"` float32 [B, 3, S, S] and `"pixel_mask"` bool [B, S, S] on `device`
    (see the module docstring); a batch already in that form (frozen-table rows, or one made ready
    before) is returned as it is."""
    if "encoded" in batch:
        square = augment_on_device(batch, config, device)
    elif "pixels" in batch and batch["pixels"].dtype == torch.uint8:
        square = batch["pixels"].to(device, non_blocking=True)
    else:
        return batch
    pixels, mask = normalize_padded(
        square, batch["pixel_size"], batch["pixel_offset"], config.mean, config.std
    )
    ready = {key: value for key, value in batch.items() if key not in _DEVICE_ONLY}
    return ready | {"pixels": pixels, "pixel_mask": mask}
