"""Image/box/text transforms that follow TransVG's (datasets/transforms.py, make_transforms).

Train: random longest-side resize over `scales`; with `crop_prob`, unless the expression has a
spatial word, TransVG's crop branch instead (shorter side to one of 400/500/600, a random crop of
384..600 px that keeps the whole box, then the same longest-side resize); colour jitter; horizontal
flip that swaps left/right in the text; normalize; pad to a square with a mask.
Eval: longest side to `image_size`, normalize, pad.

Differences from TransVG, on purpose: the crop always keeps the whole box (TransVG's check compares
the box's x with the crop's row and then clamps the box); left/right are swapped as whole words;
the box is scaled per axis by the exact resized size; padding goes bottom/right by default
(`pad_position="center"` gives TransVG's centred padding). All randomness comes from the `rng`
argument, so a sample is reproducible from (seed, epoch, index).

A record without a box (an image-text pair, `box_xyxy=None`) goes through the same steps and gets
`box_cxcywh=None`. Its crop branch is taken on the same coin, but the window is any window of an
allowed size inside the (resized) image: there is no box to keep, so the crop may cut the referent
out, as any box-agnostic crop would (`crop_prob=0` turns cropping off). Expressions with a spatial
word are still never cropped. Boxed records draw and compute exactly what they did before.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from pipeline.data.text import has_spatial_word, swap_left_right

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TransVG's crop-branch sizes, tuned for image_size 640; scaled with image_size here.
_TRANSVG_SIZE = 640
_TRANSVG_CROP_SHORT_SIDES = (400, 500, 600)
_TRANSVG_CROP_SIZE_RANGE = (384, 600)

PadPosition = Literal["bottom_right", "center"]


@dataclass(frozen=True)
class TransformConfig:
    """Augmentation settings; the defaults are TransVG's (`--aug_scale --aug_crop`, imsize 640)."""

    image_size: int = 640
    num_scales: int = 7
    scale_step: float = 0.05  # fraction of image_size between scales: TransVG's 32 px at 640
    crop_prob: float = 0.5
    color_jitter: float = 0.4  # brightness, contrast and saturation factors in [1 - x, 1 + x]
    jitter_prob: float = 0.8  # TransVG's ColorJitter acts on 80% of the samples, not on all of them
    flip_prob: float = 0.5
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    pad_position: PadPosition = "bottom_right"
    translate: bool = False  # TransVG's --aug_translate: training places the image anywhere in the square

    def __post_init__(self) -> None:
        if min(self.scales) < 32:
            raise ValueError(
                f"image_size {self.image_size} leaves scales below 32 px ({self.scales}); "
                "use a larger image_size or fewer scales"
            )
        for name in ("crop_prob", "flip_prob", "jitter_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.color_jitter < 1.0:
            raise ValueError(f"color_jitter must be in [0, 1), got {self.color_jitter}")
        if self.pad_position not in ("bottom_right", "center"):
            raise ValueError(f"pad_position must be 'bottom_right' or 'center', got {self.pad_position!r}")

    @property
    def scales(self) -> tuple[int, ...]:
        """Longest-side sizes for training: 640, 608, ..., 448 at image_size 640 (7 of them)."""
        return tuple(round(self.image_size * (1 - self.scale_step * i)) for i in range(self.num_scales))

    @property
    def crop_short_sides(self) -> tuple[int, ...]:
        """Shorter-side sizes before the crop."""
        return tuple(round(side * self.image_size / _TRANSVG_SIZE) for side in _TRANSVG_CROP_SHORT_SIDES)

    @property
    def crop_size_range(self) -> tuple[int, int]:
        """Smallest and largest crop width/height."""
        low, high = _TRANSVG_CROP_SIZE_RANGE
        return round(low * self.image_size / _TRANSVG_SIZE), round(high * self.image_size / _TRANSVG_SIZE)


@dataclass(frozen=True)
class TransformedSample:
    """A transformed sample ready for collation: uint8 content, placed in an S x S square at `offsets`.

    Loader workers ship these 8-bit pixels (a quarter of float32's bytes, no mask); normalising,
    padding and the mask are made on the training device (`pipeline/data/device_batch.py`).
    """

    pixels: torch.Tensor  # uint8 [3, h, w], the content (h, w <= S), not normalised, not padded
    offsets: tuple[int, int]  # (top, left) of the content in the S x S square
    size: int  # S, the square's side
    box_cxcywh: torch.Tensor | None  # float32 [4], centre x/y, width, height divided by S; None: no box
    text: str  # left/right swapped when flipped
    flipped: bool
    text_swapped: bool  # True only when the flip changed the text


class Transform(Protocol):
    """What `GroundingDataset` calls on each sample: its draws (`draw`), then `apply_augment_params`."""

    config: TransformConfig

    def draw(
        self,
        image_size: tuple[int, int],
        box_xyxy: Sequence[float] | None,
        text: str,
        rng: np.random.Generator,
    ) -> AugmentParams: ...


def long_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    ratio = size / max(width, height)
    return max(1, round(width * ratio)), max(1, round(height * ratio))


def _short_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    ratio = size / min(width, height)
    return max(1, round(width * ratio)), max(1, round(height * ratio))


def crop_window(
    width: int, height: int, box: np.ndarray | None, size_range: tuple[int, int], rng: np.random.Generator
) -> tuple[int, int, int, int] | None:
    """(top, left, height, width) of a random crop of random size in `size_range` holding the whole box,
    drawn from the image's size alone; None when no allowed crop size can hold the box.

    With `box=None` (an image-text pair) any window of an allowed size inside the image, drawn in the
    same order (width, height, left, top); None when the image is smaller than the smallest size."""
    if box is None:
        # An empty "box" at the far corner imposes no constraint: left in [0, width - crop_width].
        x1, y1, x2, y2 = width, height, 0, 0
    else:
        x1, y1, x2, y2 = box
    # Integer crop edges must enclose the fractional box: left <= floor(x1), right >= ceil(x2).
    min_width = max(size_range[0], math.ceil(x2) - math.floor(x1))
    min_height = max(size_range[0], math.ceil(y2) - math.floor(y1))
    max_width, max_height = min(width, size_range[1]), min(height, size_range[1])
    if min_width > max_width or min_height > max_height:
        return None
    crop_width = int(rng.integers(min_width, max_width, endpoint=True))
    crop_height = int(rng.integers(min_height, max_height, endpoint=True))
    left = int(
        rng.integers(
            max(0, math.ceil(x2) - crop_width), min(math.floor(x1), width - crop_width), endpoint=True
        )
    )
    top = int(
        rng.integers(
            max(0, math.ceil(y2) - crop_height), min(math.floor(y1), height - crop_height), endpoint=True
        )
    )
    return top, left, crop_height, crop_width


_JITTER_ADJUSTMENTS = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation)


def draw_jitter(
    strength: float, rng: np.random.Generator, prob: float = 1.0
) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """ColorJitter's brightness, contrast and saturation factors and their order, with probability
    `prob`; () when off (strength 0 draws nothing) or when the coin says no."""
    if strength == 0 or rng.random() >= prob:
        return (), ()
    factors = rng.uniform(1.0 - strength, 1.0 + strength, size=len(_JITTER_ADJUSTMENTS))
    return tuple(float(f) for f in factors), tuple(int(i) for i in rng.permutation(len(_JITTER_ADJUSTMENTS)))


def apply_jitter(image: torch.Tensor, factors: Sequence[float], order: Sequence[int]) -> torch.Tensor:
    """torchvision's ColorJitter steps on a uint8 [3, H, W] tensor (any device), in `order`."""
    for which in order:
        image = _JITTER_ADJUSTMENTS[which](image, float(factors[which]))
    return image


def hflip(image: torch.Tensor, box: np.ndarray | None) -> tuple[torch.Tensor, np.ndarray | None]:
    """Mirror an image ([3, H, W] tensor or PIL) and its box left to right."""
    width = F.get_size(image)[1]
    if box is None:
        return F.horizontal_flip(image), None
    x1, y1, x2, y2 = box
    return F.horizontal_flip(image), np.array([width - x2, y1, width - x1, y2])


def pad_offsets(config: TransformConfig, height: int, width: int) -> tuple[int, int]:
    """(top, left) of the image inside the padded square."""
    if config.pad_position == "bottom_right":
        return 0, 0
    # TransVG's centring formula, so that pad_position="center" reproduces it exactly.
    size = config.image_size
    return round((size - height) / 2.0 - 0.1), round((size - width) / 2.0 - 0.1)


def student_view_image(
    pixels: torch.Tensor, pixel_mask: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> Image.Image:
    """The 8-bit RGB image inside one normalized, padded student tensor: the pixels the student sees.

    Inverts the device-side normalisation exactly (the float error is far below half a grey level), so
    a teacher can preprocess the student's view the way the cache preprocesses an image file.
    """
    rows = (~pixel_mask).any(dim=1).nonzero().flatten()
    cols = (~pixel_mask).any(dim=0).nonzero().flatten()
    if len(rows) == 0:
        raise ValueError("the pixel mask marks every pixel as padding")
    content = pixels[:, int(rows[0]) : int(rows[-1]) + 1, int(cols[0]) : int(cols[-1]) + 1].float().cpu()
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    levels = ((content * std_t + mean_t) * 255.0).round().clamp(0, 255).to(torch.uint8)
    return F.to_pil_image(levels)


def _padded_cxcywh(box: np.ndarray, top: int, left: int, size: int) -> torch.Tensor:
    x1, y1, x2, y2 = box + np.array([left, top, left, top])
    return torch.tensor([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dtype=torch.float32) / size


def _clip(box: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.clip(box, 0.0, [width, height, width, height])


@dataclass(frozen=True)
class AugmentParams:
    """Every random choice of one `TrainTransform` draw: replaying them gives the same pixels."""

    crop_short_side: int = 0  # 0: no crop branch
    crop: tuple[int, int, int, int] | None = None  # (top, left, height, width); None: no crop taken
    scale: int = 0  # the longest side
    jitter_factors: tuple[float, ...] = ()  # () : no colour jitter
    jitter_order: tuple[int, ...] = ()
    flipped: bool = False
    offsets: tuple[int, int] | None = None  # (top, left) in the square (--aug-translate); None: the config's

    # As a row of integers (the store keeps index arrays of int32). Jitter factors are kept in
    # millionths: the cache and the trainer both apply the decoded row, so they see the same pixels.
    ROW_LENGTH = 15
    _FACTOR_UNIT = 1_000_000

    def to_row(self) -> list[int]:
        crop = self.crop or (0, 0, 0, 0)
        factors = [round(f * self._FACTOR_UNIT) for f in self.jitter_factors] or [0, 0, 0]
        order = list(self.jitter_order) or [-1, -1, -1]
        offsets = list(self.offsets) if self.offsets is not None else [-1, -1]
        return [self.crop_short_side, *crop, self.scale, *factors, *order, int(self.flipped), *offsets]

    @classmethod
    def from_row(cls, row: Sequence[int]) -> AugmentParams:
        values = [int(v) for v in row]
        if len(values) != cls.ROW_LENGTH:
            raise ValueError(f"an augmentation row has {cls.ROW_LENGTH} integers, got {len(values)}")
        short, top, left, height, width, scale = values[:6]
        jittered = values[9] >= 0
        return cls(
            crop_short_side=short,
            crop=(top, left, height, width) if height > 0 else None,
            scale=scale,
            jitter_factors=tuple(v / cls._FACTOR_UNIT for v in values[6:9]) if jittered else (),
            jitter_order=tuple(values[9:12]) if jittered else (),
            flipped=bool(values[12]),
            offsets=(values[13], values[14]) if values[13] >= 0 else None,
        )


def draw_augment_params(
    image_size: tuple[int, int],
    box_xyxy: Sequence[float] | None,
    text: str,
    config: TransformConfig,
    rng: np.random.Generator,
) -> AugmentParams:
    """`TrainTransform`'s draws, in its order, from the image's (width, height) alone (and the box,
    which the crop keeps; `box_xyxy=None`: a crop window free of it, see the module docstring)."""
    width, height = image_size
    box = None
    if box_xyxy is not None:
        box = np.clip(np.asarray(box_xyxy, dtype=np.float64), 0.0, [width, height, width, height])
    short, window = 0, None
    # A crop can change what "left" or "the middle one" refers to, so TransVG never crops those.
    if rng.random() < config.crop_prob and not has_spatial_word(text):
        short = int(rng.choice(config.crop_short_sides))
        new_width, new_height = _short_side_size(width, height, short)
        resized = None
        if box is not None:
            scale = np.array([new_width / width, new_height / height] * 2)
            resized = np.clip(box * scale, 0.0, [new_width, new_height, new_width, new_height])
        window = crop_window(new_width, new_height, resized, config.crop_size_range, rng)
    longest = int(rng.choice(config.scales))
    factors, order = draw_jitter(config.color_jitter, rng, config.jitter_prob)
    flipped = bool(rng.random() < config.flip_prob)
    offsets = None
    if config.translate:  # TransVG's NormalizeAndPad(aug_translate): a uniform place in the square
        if window is not None:
            cropped = (window[3], window[2])
        else:
            cropped = _short_side_size(width, height, short) if short else (width, height)
        final_width, final_height = long_side_size(*cropped, longest)
        offsets = (
            int(rng.integers(0, config.image_size - final_height + 1)),
            int(rng.integers(0, config.image_size - final_width + 1)),
        )
    return AugmentParams(short, window, longest, factors, order, flipped, offsets)


@dataclass(frozen=True)
class AugmentGeometry:
    """What `AugmentParams` do to an image of a given size, computed without its pixels: the sizes of
    each step, where the content lands in the square, and the box. The worker (box, text) and the
    pixel step (any device) both read it, so they cannot disagree."""

    short_side_size: tuple[int, int] | None  # (width, height) after the crop branch's resize; None: none
    crop: tuple[int, int, int, int] | None  # (top, left, height, width)
    final_size: tuple[int, int]  # (width, height) of the content
    offsets: tuple[int, int]  # (top, left) in the square
    box_cxcywh: torch.Tensor | None


def augment_geometry(
    image_size: tuple[int, int],
    box_xyxy: Sequence[float] | None,
    params: AugmentParams,
    config: TransformConfig,
) -> AugmentGeometry:
    """The sizes and the box of `apply_augment_params`, from the image's (width, height) alone."""
    width, height = image_size
    box = None if box_xyxy is None else _clip(np.asarray(box_xyxy, dtype=np.float64), width, height)
    short_size = None
    if params.crop_short_side:
        short_size = _short_side_size(width, height, params.crop_short_side)
        if box is not None:
            # Clip away float error (600.0000001 on a 600 px image), which would break the crop's bounds.
            box = _clip(box * np.array([short_size[0] / width, short_size[1] / height] * 2), *short_size)
        width, height = short_size
        if params.crop is not None:
            top, left, height, width = params.crop
            box = None if box is None else box - np.array([left, top, left, top])
    final = long_side_size(width, height, params.scale)
    if box is not None:
        box = _clip(box * np.array([final[0] / width, final[1] / height] * 2), *final)
        if params.flipped:
            x1, y1, x2, y2 = box
            box = np.array([final[0] - x2, y1, final[0] - x1, y2])
    offsets = params.offsets if params.offsets is not None else pad_offsets(config, final[1], final[0])
    size = config.image_size
    if final[0] > size or final[1] > size:
        raise ValueError(f"image {final[0]}x{final[1]} is larger than the padded size {size}")
    box_cxcywh = None if box is None else _padded_cxcywh(box, offsets[0], offsets[1], size)
    return AugmentGeometry(short_size, params.crop, final, offsets, box_cxcywh)


def _resize(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    return F.resize(image, [height, width], interpolation=InterpolationMode.BILINEAR, antialias=True)


def augment_pixels(image: torch.Tensor, params: AugmentParams, geometry: AugmentGeometry) -> torch.Tensor:
    """The pixel steps of `params` on a uint8 [3, H, W] tensor, on its device: resize, crop, resize,
    colour jitter, flip (torchvision.transforms.v2.functional on uint8). Returns uint8 [3, h, w]."""
    if geometry.short_side_size is not None:
        image = _resize(image, *geometry.short_side_size)
        if geometry.crop is not None:
            image = F.crop(image, *geometry.crop)
    image = _resize(image, *geometry.final_size)
    image = apply_jitter(image, params.jitter_factors, params.jitter_order)
    return F.horizontal_flip(image) if params.flipped else image


def as_uint8_rgb(image: torch.Tensor | Image.Image) -> torch.Tensor:
    """A uint8 [3, H, W] tensor as it is; a PIL image in RGB as one."""
    if isinstance(image, Image.Image):
        return F.pil_to_tensor(image if image.mode == "RGB" else image.convert("RGB"))
    return image


def apply_augment_params(
    image: torch.Tensor | Image.Image,
    box_xyxy: Sequence[float] | None,
    text: str,
    params: AugmentParams,
    config: TransformConfig,
) -> TransformedSample:
    """The train transform with every random choice taken from `params` (`box_xyxy=None`: no box), on a
    uint8 [3, H, W] tensor on any device (a PIL image is converted first)."""
    image = as_uint8_rgb(image)
    height, width = image.shape[-2:]
    geometry = augment_geometry((width, height), box_xyxy, params, config)
    out_text = swap_left_right(text) if params.flipped else text
    return TransformedSample(
        augment_pixels(image, params, geometry),
        geometry.offsets,
        config.image_size,
        geometry.box_cxcywh,
        out_text,
        params.flipped,
        text_swapped=out_text != text,
    )


class TrainTransform:
    """TransVG's training augmentation (see the module docstring): draw the choices, then apply them."""

    def __init__(self, config: TransformConfig | None = None) -> None:
        self.config = config or TransformConfig()

    def draw(
        self,
        image_size: tuple[int, int],
        box_xyxy: Sequence[float] | None,
        text: str,
        rng: np.random.Generator,
    ) -> AugmentParams:
        return draw_augment_params(image_size, box_xyxy, text, self.config, rng)

    def __call__(
        self,
        image: torch.Tensor | Image.Image,
        box_xyxy: Sequence[float] | None,
        text: str,
        rng: np.random.Generator,
    ) -> TransformedSample:
        image = as_uint8_rgb(image)
        params = self.draw((image.shape[-1], image.shape[-2]), box_xyxy, text, rng)
        return apply_augment_params(image, box_xyxy, text, params, self.config)


class EvalTransform:
    """Longest side to `image_size`, normalize, pad; deterministic (`rng` is accepted and unused): the
    train transform's apply step with fixed choices (no crop, no jitter, no flip)."""

    def __init__(self, config: TransformConfig | None = None) -> None:
        self.config = config or TransformConfig()

    def draw(
        self,
        image_size: tuple[int, int] | None = None,
        box_xyxy: Sequence[float] | None = None,
        text: str = "",
        rng: np.random.Generator | None = None,
    ) -> AugmentParams:
        return AugmentParams(scale=self.config.image_size)

    def __call__(
        self,
        image: torch.Tensor | Image.Image,
        box_xyxy: Sequence[float] | None,
        text: str,
        rng: np.random.Generator | None = None,
    ) -> TransformedSample:
        return apply_augment_params(image, box_xyxy, text, self.draw(), self.config)

    def box(self, box_xyxy: Sequence[float] | None, image_size: tuple[int, int]) -> torch.Tensor | None:
        """The normalized cxcywh box `__call__` gives for an image of `image_size` (width, height),
        computed without its pixels: several records of one image need one decode. None: no box."""
        return augment_geometry(image_size, box_xyxy, self.draw(), self.config).box_cxcywh
