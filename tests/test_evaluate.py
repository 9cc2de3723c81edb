"""pipeline.engine.evaluate: predictions back to pixel boxes."""

import pytest
import torch

from pipeline.data.transforms import EvalTransform, TransformConfig
from pipeline.engine.evaluate import to_pixels


@pytest.mark.parametrize("pad_position", ["bottom_right", "center"])
@pytest.mark.parametrize("size", [(640, 427), (333, 500), (64, 64)])
def test_to_pixels_undoes_the_eval_transform_whatever_the_padding(pad_position, size):
    config = TransformConfig(image_size=64, pad_position=pad_position)
    box = (31.0, 17.5, 60.25, 52.0)
    normalized = EvalTransform(config).box(box, size)
    back = to_pixels(normalized[None], torch.tensor([size]), config)[0]
    assert torch.allclose(back, torch.tensor(box), atol=1e-3), back
