"""Image files as uint8 tensors: read the bytes with `read_rgb`'s checks, decode on the CPU or the device.

`read_encoded` checks the header's declared size before anything is decoded (as `read_rgb` does) and
returns the file's bytes; `decode_images` decodes a list of them with torchvision (JPEGs batched on a
CUDA device through nvJPEG, everything else on the CPU) and refuses a JPEG cut short: torchvision
raises on one without an end marker, and one whose end marker is still there ends in mid-grey blocks
(`pipeline/data/images.py` says why), checked on the decoded tensor. Formats torchvision cannot decode
go through PIL (`read_rgb`'s own path), so every format `read_rgb` takes is still taken.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.transforms.v2 import functional as F

from pipeline.data.images import _ZERO_BLOCK, _ZERO_GREY, BadImageError, check_declared_size, read_rgb

# The formats torchvision's decode_image reads; any other goes through PIL on the CPU.
_TORCHVISION_FORMATS = ("JPEG", "PNG", "GIF", "WEBP")


@dataclass(frozen=True)
class EncodedImage:
    """An image file's bytes and what its header says."""

    data: torch.Tensor  # uint8 [n_bytes]
    size: tuple[int, int]  # (width, height) from the header
    format: str  # PIL's name for it: "JPEG", "PNG", ...


def read_encoded(path: Path) -> EncodedImage:
    """The file's bytes, after the header's size passed `check_declared_size` (nothing decoded yet).

    A missing file stays a FileNotFoundError; a file PIL cannot identify is a `BadImageError`.
    """
    data = Path(path).read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as image:
            size, fmt = image.size, image.format or ""
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(f"{path}: cannot be decoded ({type(exc).__name__}: {exc})") from exc
    check_declared_size(path, size)
    return EncodedImage(torch.frombuffer(bytearray(data), dtype=torch.uint8), size, fmt)


def _grey_end(pixels: torch.Tensor) -> torch.Tensor:
    """bool []: the last block of uint8 [3, H, W] is exactly mid-grey (on `pixels`' device, not read)."""
    return (pixels[:, -_ZERO_BLOCK:, -_ZERO_BLOCK:] == _ZERO_GREY).all()


def _refuse_grey_end(pixels: torch.Tensor, path: Path | str) -> torch.Tensor:
    """`pixels` (uint8 [3, H, W]) unless its last block is exactly mid-grey, as after a premature end."""
    if bool(_grey_end(pixels)):
        raise BadImageError(
            f"{path}: a truncated JPEG (its last blocks are missing and would decode as grey); "
            "re-download or re-extract it"
        )
    return pixels


def _decode_one_cpu(image: EncodedImage, path: Path | str) -> torch.Tensor:
    if image.format not in _TORCHVISION_FORMATS:
        return F.pil_to_tensor(read_rgb(Path(path)))  # BMP, TIFF, ...: PIL's decoder, its checks
    try:
        pixels = decode_image(image.data, mode=ImageReadMode.RGB)
    except RuntimeError as exc:  # torchvision's message does not name the file: ours must
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise BadImageError(f"{path}: cannot be decoded ({first})") from exc
    return _refuse_grey_end(pixels, path) if image.format == "JPEG" else pixels


def decode_images(
    images: Sequence[EncodedImage], paths: Sequence[Path | str], device: torch.device
) -> list[torch.Tensor]:
    """Each image as uint8 [3, H, W] on `device`; `paths` name them in errors.

    On CUDA the JPEGs are decoded in one batched `decode_jpeg` call on the device; the rest (and every
    image on another device) on the CPU, then moved.
    """
    out: list[torch.Tensor | None] = [None] * len(images)
    if device.type == "cuda":
        jpegs = [i for i, image in enumerate(images) if image.format == "JPEG"]
        if jpegs:
            try:
                decoded = decode_jpeg([images[i].data for i in jpegs], mode=ImageReadMode.RGB, device=device)
            except RuntimeError:
                decoded = None  # one bad file fails the batch: decode one by one on the CPU to name it
            if decoded is not None:
                # One host read for the whole batch (not one per image): which ends are mid-grey.
                grey = torch.stack([_grey_end(pixels) for pixels in decoded]).nonzero().flatten().tolist()
                for j in grey:
                    _refuse_grey_end(decoded[j], paths[jpegs[j]])
                for i, pixels in zip(jpegs, decoded, strict=True):
                    out[i] = pixels
    for i, image in enumerate(images):
        if out[i] is None:
            out[i] = _decode_one_cpu(image, paths[i]).to(device, non_blocking=True)
    return [pixels for pixels in out if pixels is not None]


def read_image_tensor(path: Path) -> torch.Tensor:
    """One file decoded on the CPU: uint8 [3, H, W], with `read_rgb`'s checks."""
    return decode_images([read_encoded(path)], [path], torch.device("cpu"))[0]
