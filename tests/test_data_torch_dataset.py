"""GroundingDataset items, per-epoch randomness, and the picklable collate."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from pipeline.data import (
    EvalTransform,
    GroundingCollate,
    GroundingDataset,
    MissingImagesError,
    Sample,
    TrainTransform,
    TransformConfig,
)

CONFIG = TransformConfig(image_size=64)


def fake_tokenize(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """One id per word, padded to the longest text; module level so that it pickles."""
    length = max(len(text.split()) for text in texts)
    ids = torch.zeros((len(texts), length), dtype=torch.long)
    mask = torch.zeros((len(texts), length), dtype=torch.bool)
    for row, text in enumerate(texts):
        ids[row, : len(text.split())] = torch.arange(1, len(text.split()) + 1)
        mask[row, : len(text.split())] = True
    return ids, mask


@pytest.fixture
def samples(tmp_path: Path) -> list[Sample]:
    made = []
    for number, (width, height) in enumerate([(80, 60), (50, 90), (64, 64)]):
        path = tmp_path / f"{number}.jpg"
        Image.new("RGB", (width, height), (40 * number, 100, 150)).save(path)
        made.append(
            Sample(
                path, path.name, (5.0, 6.0, 30.0, 40.0), f"the left thing {number}", "train", "x", 10 + number
            )
        )
    return made


def test_items_carry_everything_the_trainer_needs(samples: list[Sample]) -> None:
    item = GroundingDataset(samples, EvalTransform(CONFIG))[1]
    assert item["pixels"].shape == (3, 64, 64) and item["pixel_mask"].shape == (64, 64)
    assert item["box"].shape == (4,) and item["index"] == 11
    assert torch.equal(item["box_xyxy"], torch.tensor([5.0, 6.0, 30.0, 40.0]))
    assert item["image_size"] == (50, 90)
    assert (item["text"], item["flipped"], item["text_swapped"]) == ("the left thing 1", False, False)


def test_randomness_depends_on_seed_epoch_and_position(samples: list[Sample]) -> None:
    dataset = GroundingDataset(samples, TrainTransform(CONFIG), seed=3)
    first = [dataset[i]["pixels"] for i in range(3)]
    assert all(torch.equal(a, dataset[i]["pixels"]) for i, a in enumerate(first))
    dataset.set_epoch(1)
    assert any(not torch.equal(a, dataset[i]["pixels"]) for i, a in enumerate(first))
    other_seed = GroundingDataset(samples, TrainTransform(CONFIG), seed=4)
    assert any(not torch.equal(a, other_seed[i]["pixels"]) for i, a in enumerate(first))


def test_dataloader_batches_with_the_picklable_collate(samples: list[Sample]) -> None:
    collate = pickle.loads(pickle.dumps(GroundingCollate(fake_tokenize)))  # what DataLoader workers do
    loader = DataLoader(GroundingDataset(samples, TrainTransform(CONFIG)), batch_size=3, collate_fn=collate)
    batch = next(iter(loader))
    assert batch["pixels"].shape == (3, 3, 64, 64) and batch["pixel_mask"].dtype == torch.bool
    assert batch["box"].shape == (3, 4) and batch["box_xyxy"].shape == (3, 4)
    assert batch["image_size"].tolist() == [[80, 60], [50, 90], [64, 64]]
    assert batch["index"].tolist() == [10, 11, 12]
    assert batch["flipped"].dtype == torch.bool and batch["text_swapped"].dtype == torch.bool
    assert torch.equal(batch["flipped"], batch["text_swapped"])  # every text has "left"
    assert batch["token_ids"].shape == batch["token_mask"].shape == (3, 4)
    assert len(batch["text"]) == 3


def test_a_missing_image_is_a_clear_error(samples: list[Sample], tmp_path: Path) -> None:
    gone = Sample(tmp_path / "gone.jpg", "gone.jpg", (0, 0, 1, 1), "x", "val", "0", 0)
    with pytest.raises(MissingImagesError, match="gone.jpg.*--skip-missing"):
        GroundingDataset([gone], EvalTransform(CONFIG))[0]
