"""TransVG's recipe, reviewed: jitter on 80% of samples, --aug_translate, pixel boxes under any padding."""

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data.transforms import EvalTransform, TrainTransform, TransformConfig, color_jitter
from pipeline.engine.evaluate import to_pixels


def noise_image(width: int, height: int) -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_colour_jitter_acts_on_80_percent_of_the_samples():
    image = noise_image(16, 16)
    changed = [
        color_jitter(image, 0.4, np.random.default_rng(seed), prob=0.8).tobytes() != image.tobytes()
        for seed in range(400)
    ]
    assert 0.74 < np.mean(changed) < 0.86
    assert TransformConfig().jitter_prob == 0.8


def unpadded_top_left(mask: torch.Tensor) -> tuple[int, int]:
    rows, columns = torch.nonzero(~mask, as_tuple=True)
    return int(rows.min()), int(columns.min())


def test_aug_translate_places_the_image_anywhere_and_the_box_follows():
    config = TransformConfig(image_size=64, crop_prob=0.0, color_jitter=0.0, flip_prob=0.0)
    image, box = noise_image(80, 40), (10.0, 5.0, 50.0, 30.0)
    plain = {unpadded_top_left(TrainTransform(config)(image, box, "x", np.random.default_rng(s)).pixel_mask)
             for s in range(20)}  # fmt: skip
    assert plain == {(0, 0)}
    moved = TrainTransform(TransformConfig(**{**config.__dict__, "translate": True}))
    places = set()
    for seed in range(20):
        out = moved(image, box, "x", np.random.default_rng(seed))
        top, left = unpadded_top_left(out.pixel_mask)
        places.add((top, left))
        cx, cy, w, h = (out.box_cxcywh * 64).tolist()
        height, width = (~out.pixel_mask).sum(0).max(), (~out.pixel_mask).sum(1).max()
        assert left <= cx - w / 2 and cx + w / 2 <= left + width + 1e-4
        assert top <= cy - h / 2 and cy + h / 2 <= top + height + 1e-4
    assert len(places) > 5


@pytest.mark.parametrize("pad_position", ["bottom_right", "center"])
@pytest.mark.parametrize("size", [(640, 427), (333, 500), (64, 64)])
def test_to_pixels_undoes_the_eval_transform_whatever_the_padding(pad_position, size):
    config = TransformConfig(image_size=64, pad_position=pad_position)
    box = (31.0, 17.5, 60.25, 52.0)
    normalized = EvalTransform(config).box(box, size)
    back = to_pixels(normalized[None], torch.tensor([size]), config)[0]
    assert torch.allclose(back, torch.tensor(box), atol=1e-3), back
