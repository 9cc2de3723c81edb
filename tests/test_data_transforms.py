"""The box follows every geometric step of the TransVG transforms; flips swap left/right; colour jitter
on 80% of samples and --aug_translate as in TransVG's recipe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data import EvalTransform, TrainTransform, TransformConfig, TransformedSample
from pipeline.data.device_batch import sample_pixels
from pipeline.data.transforms import apply_jitter, draw_jitter

CONFIG = TransformConfig(image_size=192)  # small, so that many seeds stay fast
BOX = (196.0, 40.0, 262.0, 110.0)  # off-centre, so a flip moves it


def _scene() -> Image.Image:
    """Greenish noise (G above R and B) with a magenta rectangle (R and B far above G) at BOX."""
    rng = np.random.default_rng(0)
    pixels = np.empty((240, 320, 3), dtype=np.uint8)
    green = rng.integers(90, 200, (240, 320))
    pixels[..., 1] = green
    pixels[..., 0] = green - rng.integers(30, 60, (240, 320))
    pixels[..., 2] = green - rng.integers(30, 60, (240, 320))
    x1, y1, x2, y2 = (int(v) for v in BOX)
    pixels[y1:y2, x1:x2] = (210, 40, 200)
    return Image.fromarray(pixels)


def _padded(sample: TransformedSample) -> tuple[torch.Tensor, torch.Tensor]:
    """What the student receives: normalised float pixels [3, S, S] and the mask [S, S]."""
    return sample_pixels(sample, CONFIG.mean, CONFIG.std)


def _unnormalize(sample: TransformedSample) -> np.ndarray:
    mean = torch.tensor(CONFIG.mean)[:, None, None]
    std = torch.tensor(CONFIG.std)[:, None, None]
    return ((_padded(sample)[0] * std + mean) * 255).permute(1, 2, 0).numpy()


def _magenta_bbox(sample: TransformedSample) -> tuple[int, int, int, int]:
    rgb = _unnormalize(sample)
    content = ~_padded(sample)[1].numpy()
    magenta = (rgb[..., 0] - rgb[..., 1] > 40) & (rgb[..., 2] - rgb[..., 1] > 40) & content
    ys, xs = np.nonzero(magenta)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def _box_xyxy_pixels(sample: TransformedSample) -> np.ndarray:
    cx, cy, w, h = (sample.box_cxcywh * CONFIG.image_size).tolist()
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def _was_cropped(sample: TransformedSample) -> bool:
    valid = ~_padded(sample)[1]
    width, height = int(valid[0].sum()), int(valid[:, 0].sum())
    return abs(width / height - 320 / 240) > 0.03


@pytest.mark.parametrize(
    ("text", "flipped_text"),
    [("the magenta box", "the magenta box"), ("the box left of the tree", "the box right of the tree")],
)
def test_train_transform_box_covers_the_same_pixels(text: str, flipped_text: str) -> None:
    transform, image = TrainTransform(CONFIG), _scene()
    flips = crops = 0
    for seed in range(24):
        out = transform(image, BOX, text, np.random.default_rng(seed))
        pixels, mask = _padded(out)
        assert pixels.shape == (3, 192, 192) and mask.shape == (192, 192)
        assert pixels.dtype == torch.float32 and mask.dtype == torch.bool
        assert out.pixels.dtype == torch.uint8 and out.pixels.shape[0] == 3  # what the workers ship
        # Resampling blurs the rectangle's edge by about a pixel at the smallest scale.
        np.testing.assert_allclose(_magenta_bbox(out), _box_xyxy_pixels(out), atol=1.5)
        assert out.text == (flipped_text if out.flipped else text)
        assert out.text_swapped == (out.flipped and flipped_text != text)
        flips += out.flipped
        crops += _was_cropped(out)
    assert 0 < flips < 24
    if "left" in text:
        assert crops == 0  # spatial words disable the crop, as in TransVG
    else:
        assert crops > 0


def test_train_transform_is_reproducible_from_the_rng() -> None:
    transform, image = TrainTransform(CONFIG), _scene()
    first = transform(image, BOX, "the box", np.random.default_rng((1, 2, 3)))
    again = transform(image, BOX, "the box", np.random.default_rng((1, 2, 3)))
    other = transform(image, BOX, "the box", np.random.default_rng((1, 2, 4)))
    assert torch.equal(first.pixels, again.pixels) and torch.equal(first.box_cxcywh, again.box_cxcywh)
    assert not torch.equal(first.pixels, other.pixels)


def test_eval_transform_box_is_exact() -> None:
    config = TransformConfig(image_size=150)
    out = EvalTransform(config)(Image.new("RGB", (300, 200)), (30, 40, 120, 160), "left dog")
    # scale 0.5: box (15, 20, 60, 80) -> centre (37.5, 50), size (45, 60), divided by 150
    torch.testing.assert_close(out.box_cxcywh, torch.tensor([37.5, 50.0, 45.0, 60.0]) / 150)
    assert (out.text, out.flipped, out.text_swapped) == ("left dog", False, False)
    pixels, mask = sample_pixels(out, config.mean, config.std)
    assert not mask[:100].any() and mask[100:].all()  # image on top, padding below
    assert torch.all(pixels[:, 100:] == 0)  # zero after normalization = the mean colour


def test_center_padding_matches_transvg() -> None:
    config = TransformConfig(image_size=150, pad_position="center")
    out = EvalTransform(config)(Image.new("RGB", (300, 200)), (30, 40, 120, 160), "dog")
    top = round((150 - 100) / 2 - 0.1)
    mask = sample_pixels(out, config.mean, config.std)[1]
    assert mask[:top].all() and not mask[top : top + 100].any()
    torch.testing.assert_close(out.box_cxcywh, torch.tensor([37.5, 50.0 + top, 45.0, 60.0]) / 150)


def test_grayscale_input_and_config_defaults() -> None:
    out = EvalTransform(CONFIG)(Image.new("L", (50, 80), 128), (0, 0, 10, 10), "x")
    assert _padded(out)[0].shape == (3, 192, 192) and out.pixels.shape == (3, 192, 120)
    default = TransformConfig()
    assert default.scales == (640, 608, 576, 544, 512, 480, 448)
    assert (default.crop_short_sides, default.crop_size_range) == ((400, 500, 600), (384, 600))
    assert TransformConfig(image_size=256).scales == (256, 243, 230, 218, 205, 192, 179)
    with pytest.raises(ValueError, match="below 32 px"):
        TransformConfig(image_size=40)


@pytest.mark.parametrize("pad_position", ["bottom_right", "center"])
def test_the_eval_box_without_pixels_is_the_transforms_box(pad_position):
    """`EvalTransform.box` (records that share an image decode it once) equals the full transform's box."""
    transform = EvalTransform(TransformConfig(image_size=96, pad_position=pad_position))
    rng = np.random.default_rng(0)
    for _ in range(20):
        width, height = (int(v) for v in rng.integers(40, 300, 2))
        x1, y1 = rng.uniform(-5, 0.8 * width), rng.uniform(-5, 0.8 * height)
        box = (x1, y1, x1 + rng.uniform(1, width), y1 + rng.uniform(1, height))  # may leave the image
        image = Image.new("RGB", (width, height))
        expected = transform(image, box, "the box").box_cxcywh
        assert torch.equal(transform.box(box, (width, height)), expected)


# TransVG's recipe, reviewed: jitter on 80% of samples, --aug_translate ----------------------------


def _noise_image(width: int, height: int) -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_colour_jitter_acts_on_80_percent_of_the_samples():
    image = torch.from_numpy(np.array(_noise_image(16, 16))).permute(2, 0, 1)
    changed = [
        not torch.equal(apply_jitter(image, *draw_jitter(0.4, np.random.default_rng(seed), prob=0.8)), image)
        for seed in range(400)
    ]
    assert 0.74 < np.mean(changed) < 0.86
    assert TransformConfig().jitter_prob == 0.8


def _unpadded_top_left(mask: torch.Tensor) -> tuple[int, int]:
    rows, columns = torch.nonzero(~mask, as_tuple=True)
    return int(rows.min()), int(columns.min())


def test_aug_translate_places_the_image_anywhere_and_the_box_follows():
    config = TransformConfig(image_size=64, crop_prob=0.0, color_jitter=0.0, flip_prob=0.0)
    image, box = _noise_image(80, 40), (10.0, 5.0, 50.0, 30.0)
    plain = {_unpadded_top_left(_padded(TrainTransform(config)(image, box, "x", np.random.default_rng(s)))[1])
             for s in range(20)}  # fmt: skip
    assert plain == {(0, 0)}
    moved = TrainTransform(TransformConfig(**{**config.__dict__, "translate": True}))
    places = set()
    for seed in range(20):
        out = moved(image, box, "x", np.random.default_rng(seed))
        mask = _padded(out)[1]
        top, left = _unpadded_top_left(mask)
        places.add((top, left))
        cx, cy, w, h = (out.box_cxcywh * 64).tolist()
        height, width = (~mask).sum(0).max(), (~mask).sum(1).max()
        assert left <= cx - w / 2 and cx + w / 2 <= left + width + 1e-4
        assert top <= cy - h / 2 and cy + h / 2 <= top + height + 1e-4
    assert len(places) > 5
