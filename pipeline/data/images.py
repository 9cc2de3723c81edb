"""The one way an image file becomes pixels: size capped before decoding, silent truncation refused.

Two failures PIL lets through: a small file that declares a huge canvas (a 40 KB JPEG may claim
12000x12000 px, 430 MB of RGB, and PIL only warns below 179 M px), and a JPEG cut short whose end
marker is still there (copied back, or re-appended by a tool): libjpeg then fills the missing blocks
with zero coefficients and PIL returns the image, its lower part flat grey, without a word.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.errors import ExpectedError

# Far above every grounding dataset (COCO 640 px, Flickr30k 500 px, SAIAPR-12 480 px) and below what
# would exhaust a loader worker: 50 M px is 150 MB of RGB.
MAX_IMAGE_PIXELS = 50_000_000
_ZERO_BLOCK = 8  # a JPEG block's side; blocks past a premature end all decode to this grey
_ZERO_GREY = 128


class BadImageError(ExpectedError, OSError):
    """An image file that must not be decoded or whose decoded pixels cannot be trusted."""


def check_declared_size(path: Path, size: tuple[int, int]) -> None:
    """Refuse an image whose header declares more than `MAX_IMAGE_PIXELS`, before anything is decoded."""
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise BadImageError(
            f"{path}: declares {width}x{height} px, over the {MAX_IMAGE_PIXELS:,} px limit "
            "(a decompression bomb or not a photo); refusing to decode it"
        )


def ends_in_zero_blocks(rgb: Image.Image, block: int = _ZERO_BLOCK) -> bool:
    """True when the last block (bottom right) is exactly mid-grey, as after a premature end of data.

    libjpeg decodes each block missing after a premature end as zero coefficients: exactly (128,
    128, 128), so the last block of a JPEG cut short is always that. A real photo's last 8x8 block is
    practically never exactly uniform mid-grey; an image that is would be refused with its name.
    """
    width, height = rgb.size
    corner = rgb.crop((max(0, width - block), max(0, height - block), width, height))
    return bool((np.asarray(corner) == _ZERO_GREY).all())


def read_rgb(path: Path, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """The image at `path`, decoded, in RGB; `BadImageError` for oversized or cut-short files.

    `draft_size`: let a JPEG decode at 1/2..1/8 scale while still covering that size (PIL's draft).
    A missing file stays a FileNotFoundError; every other failure (not an image, truncated without
    an end marker) becomes a `BadImageError` naming the file.
    """
    try:
        with Image.open(path) as image:
            check_declared_size(path, image.size)
            declared_width = image.size[0]
            is_jpeg = image.format == "JPEG"
            if is_jpeg and draft_size is not None:
                image.draft("RGB", draft_size)
            rgb = image.convert("RGB")
    except (FileNotFoundError, BadImageError):
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        # PIL's messages ("image file is truncated") do not say which file: ours must.
        raise BadImageError(f"{path}: cannot be decoded ({type(exc).__name__}: {exc})") from exc
    block = max(1, round(_ZERO_BLOCK * rgb.size[0] / declared_width))  # a block shrinks with the draft
    if is_jpeg and ends_in_zero_blocks(rgb, block):
        raise BadImageError(
            f"{path}: a truncated JPEG (its last blocks are missing and would decode as grey); "
            "re-download or re-extract it"
        )
    return rgb
