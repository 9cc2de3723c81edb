"""The trivial baselines, against hand computations."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from pipeline.data.sample import Sample
from pipeline.engine.baselines import centre_prior, prior_results, text_prior


def _sample(root: Path, text: str, box: tuple[float, ...], size=(100, 50), name="a.png") -> Sample:
    path = root / name
    if not path.exists():
        Image.new("RGB", size).save(path)
    return Sample(
        image_path=path, image_key=name, box_xyxy=box, text=text, split="train", sample_id=text, index=0
    )


def test_priors_by_hand(tmp_path):
    train = [
        _sample(tmp_path, "left", (0, 0, 20, 10)),  # normalized cxcywh (0.1, 0.1, 0.2, 0.2)
        _sample(tmp_path, "left", (20, 0, 40, 10)),  # (0.3, 0.1, 0.2, 0.2)
        _sample(tmp_path, "right", (60, 20, 100, 50)),  # (0.8, 0.7, 0.4, 0.6)
    ]
    torch.testing.assert_close(
        centre_prior(train), torch.tensor([0.5, 0.5, 0.8 / 3, 1.0 / 3], dtype=torch.float64)
    )
    per_text, overall = text_prior(train)
    torch.testing.assert_close(per_text["left"], torch.tensor([0.2, 0.1, 0.2, 0.2], dtype=torch.float64))
    torch.testing.assert_close(overall, torch.tensor([1.2 / 3, 0.3, 0.8 / 3, 1.0 / 3], dtype=torch.float64))
    held_out = [
        _sample(tmp_path, "left", (10, 0, 30, 10)),  # the "left" mean exactly: IoU 1
        _sample(tmp_path, "right", (0, 0, 40, 30)),  # (0.2, 0.3, 0.4, 0.6) vs mean (0.8, 0.7, ...): IoU 0
    ]
    results = prior_results(train, {"val": held_out})
    assert results["text-only prior"]["val"] == {"acc@0.5": 0.5, "miou": pytest.approx(0.5), "n": 2}
    # centre box x 36.67..63.33, y 16.67..33.33 (pixels): no overlap with (10,0,30,10); with (0,0,40,30)
    # the overlap is 3.33 x 13.33 = 44.4 of a union 1200 + 444.4 - 44.4 = 1600
    assert results["centre prior"]["val"]["miou"] == pytest.approx((0 + 44.444 / 1600) / 2, rel=1e-3)
    assert results["centre prior"]["val"]["acc@0.5"] == 0.0
