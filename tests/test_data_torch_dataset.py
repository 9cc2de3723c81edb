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
from pipeline.engine.distributed import DistEnv, EpochSampler

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
    # uint8 content (50x90 -> 36x64) at its place in the square: the student's floats are made later
    assert item["pixels"].shape == (3, 64, 36) and item["pixels"].dtype == torch.uint8
    assert item["offsets"] == (0, 0) and item["size"] == 64
    assert item["box"].shape == (4,) and item["index"] == 11
    assert torch.equal(item["box_xyxy"], torch.tensor([5.0, 6.0, 30.0, 40.0]))
    assert item["image_size"] == (50, 90)
    assert (item["text"], item["flipped"], item["text_swapped"]) == ("the left thing 1", False, False)


def test_randomness_depends_on_seed_epoch_and_position(samples: list[Sample]) -> None:
    dataset = GroundingDataset(samples, TrainTransform(CONFIG), seed=3)
    first = [dataset[i]["pixels"] for i in range(3)]
    assert all(torch.equal(a, dataset[i]["pixels"]) for i, a in enumerate(first))
    second_epoch = [dataset[3 + i] for i in range(3)]  # position epoch·n + i
    assert [item["index"] for item in second_epoch] == [10, 11, 12]
    assert any(not torch.equal(a, b["pixels"]) for a, b in zip(first, second_epoch, strict=True))
    other_seed = GroundingDataset(samples, TrainTransform(CONFIG), seed=4)
    assert any(not torch.equal(a, other_seed[i]["pixels"]) for i, a in enumerate(first))
    with pytest.raises(IndexError, match="count up from 0"):
        dataset[-1]


def test_epoch_sampler_shards_each_epoch_and_carries_it_in_the_positions() -> None:
    ranks = [EpochSampler(10, DistEnv(rank=rank, world_size=2), seed=5) for rank in range(2)]
    for epoch in (0, 3):
        for sampler in ranks:
            sampler.set_epoch(epoch)
        shares = [list(sampler) for sampler in ranks]
        assert sorted(shares[0] + shares[1]) == [epoch * 10 + i for i in range(10)]
        assert all(len(share) == len(sampler) == 5 for share, sampler in zip(shares, ranks, strict=True))
    single = EpochSampler(10, DistEnv(), seed=5)
    orders = []
    for epoch in (0, 1):
        single.set_epoch(epoch)
        orders.append([position % 10 for position in single])
    assert orders[0] != orders[1] and sorted(orders[0]) == sorted(orders[1]) == list(range(10))


def test_persistent_workers_draw_each_epochs_augmentation(samples: list[Sample]) -> None:
    """Workers that live across epochs copied the dataset at start; the epoch must reach them anyway."""
    dataset = GroundingDataset(samples, TrainTransform(CONFIG), seed=3)
    sampler = EpochSampler(len(dataset), DistEnv(), seed=0)
    loader = DataLoader(
        dataset,
        batch_size=3,
        sampler=sampler,
        num_workers=1,
        persistent_workers=True,
        collate_fn=GroundingCollate(fake_tokenize),
    )
    epochs = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        (batch,) = list(loader)
        expected = GroundingCollate(fake_tokenize)([dataset[position] for position in sampler])
        assert torch.equal(batch["pixels"], expected["pixels"])
        epochs.append(batch)
    assert loader._iterator is not None  # the same worker served both epochs
    same_order = epochs[0]["index"].argsort(), epochs[1]["index"].argsort()
    assert not torch.equal(epochs[0]["pixels"][same_order[0]], epochs[1]["pixels"][same_order[1]])


def test_dataloader_batches_with_the_picklable_collate(samples: list[Sample]) -> None:
    collate = pickle.loads(pickle.dumps(GroundingCollate(fake_tokenize)))  # what DataLoader workers do
    loader = DataLoader(GroundingDataset(samples, TrainTransform(CONFIG)), batch_size=3, collate_fn=collate)
    batch = next(iter(loader))
    assert batch["pixels"].shape == (3, 3, 64, 64) and batch["pixels"].dtype == torch.uint8
    assert batch["pixel_size"].shape == batch["pixel_offset"].shape == (3, 2)
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
