"""Pixels leave the loader as uint8 (a quarter of float32's bytes, no mask) and become the student's
float pixels and mask on the training device; "device" augmentation (file bytes + choices, decoded and
augmented by the trainer) gives the batches "workers" augmentation gives; bad images stay one line."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import decode_jpeg as real_decode_jpeg
from torchvision.transforms.v2 import functional as F

import pipeline.data.decode as decode
from pipeline.data import (
    EvalTransform,
    GroundingCollate,
    GroundingDataset,
    Sample,
    TrainTransform,
    TransformConfig,
)
from pipeline.data.device_batch import resolve_augment_on, to_device_batch
from pipeline.data.images import BadImageError
from pipeline.engine.config import TrainConfig, apply_settings, parse_settings

CONFIG = TransformConfig(image_size=96)
CPU = torch.device("cpu")


def fake_tokenize(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.ones((len(texts), 2), dtype=torch.long), torch.ones((len(texts), 2), dtype=torch.bool)


def _photo(width: int, height: int, seed: int) -> Image.Image:
    """Smooth colour gradients plus noise: a JPEG of it has no flat grey last block."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([xs * 200 / width, ys * 200 / height, (xs + ys) * 100 / (width + height)], -1)
    return Image.fromarray((base + rng.integers(0, 55, (height, width, 3))).astype(np.uint8))


@pytest.fixture
def samples(tmp_path: Path) -> list[Sample]:
    made = []
    for number, (width, height, kind) in enumerate(
        [(160, 120, "jpg"), (90, 150, "png"), (130, 130, "jpg"), (200, 100, "gray.jpg")]
    ):
        path = tmp_path / f"{number}.{kind}"
        image = _photo(width, height, number)
        (image.convert("L") if kind == "gray.jpg" else image).save(path)
        box = (10.0, 12.0, 60.0 + number, 70.0) if number != 2 else None  # one image-text pair
        made.append(Sample(path, path.name, box, f"the left thing {number}", "train", str(number), number))
    return made


def _batch(samples: list[Sample], augment_on: str, transform=None, epoch: int = 0) -> dict:
    dataset = GroundingDataset(samples, transform or TrainTransform(CONFIG), seed=7)
    dataset.augment_on = augment_on
    items = [dataset[epoch * len(samples) + i] for i in range(len(samples))]
    return GroundingCollate(fake_tokenize)(items)


def _payload_bytes(batch: dict) -> int:
    """Bytes of the tensors a loader worker hands over for the pixels."""
    keys = ("pixels", "pixel_mask", "pixel_size", "pixel_offset")
    return sum(batch[key].numel() * batch[key].element_size() for key in keys if key in batch)


def test_the_ipc_payload_is_uint8_and_about_four_times_smaller(samples):
    batch = _batch(samples, "workers")
    assert batch["pixels"].dtype == torch.uint8 and "pixel_mask" not in batch
    size = CONFIG.image_size
    before = len(samples) * (
        3 * size * size * 4 + size * size
    )  # float32 pixels + bool mask, as shipped before
    assert before / _payload_bytes(batch) > 4.2


def test_device_normalising_equals_normalising_each_sample_on_the_cpu(samples):
    """The old path: normalise the content in float32, then pad with 0 and a mask (True = padding)."""
    transform = TrainTransform(TransformConfig(image_size=96, translate=True))  # content anywhere
    dataset = GroundingDataset(samples, transform, seed=1)
    items = [dataset[i] for i in range(len(samples))]
    ready = to_device_batch(GroundingCollate(fake_tokenize)(items), CONFIG, CPU)
    assert ready["pixels"].dtype == torch.float32 and ready["pixel_mask"].dtype == torch.bool
    for i, item in enumerate(items):
        content = F.normalize(F.to_dtype(item["pixels"], torch.float32, scale=True), CONFIG.mean, CONFIG.std)
        (top, left), (height, width) = item["offsets"], item["pixels"].shape[-2:]
        expected = torch.zeros((3, 96, 96))
        expected[:, top : top + height, left : left + width] = content
        mask = torch.ones((96, 96), dtype=torch.bool)
        mask[top : top + height, left : left + width] = False
        assert torch.equal(ready["pixels"][i], expected) and torch.equal(ready["pixel_mask"][i], mask)


@pytest.mark.parametrize("epoch", [0, 1, 2])
def test_device_and_workers_augmentation_give_the_same_batch(samples, epoch):
    workers = to_device_batch(_batch(samples, "workers", epoch=epoch), CONFIG, CPU)
    device = _batch(samples, "device", epoch=epoch)
    assert "pixels" not in device and device["encoded"][0][0].dtype == torch.uint8  # the file's bytes
    device = to_device_batch(device, CONFIG, CPU)
    assert set(device) == set(workers)
    for key, value in workers.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, device[key]), key
        else:
            assert value == device[key], key


def test_eval_transform_ships_through_the_device_path_too(samples):
    workers = to_device_batch(_batch(samples, "workers", EvalTransform(CONFIG)), CONFIG, CPU)
    device = to_device_batch(_batch(samples, "device", EvalTransform(CONFIG)), CONFIG, CPU)
    assert torch.equal(workers["pixels"], device["pixels"]) and torch.equal(workers["box"], device["box"])


def test_a_ready_batch_passes_through_unchanged():
    rows = {"backbone_features": torch.zeros(2, 4, 3, 3)}
    assert to_device_batch(rows, CONFIG, CPU) is rows


@pytest.mark.parametrize("augment_on", ["workers", "device"])
def test_bad_images_are_one_line_on_both_paths(samples, tmp_path, augment_on):
    data = samples[0].image_path.read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2] + b"\xff\xd9")  # cut short, end marker re-appended
    unended = tmp_path / "unended.jpg"
    unended.write_bytes(data[: len(data) // 2])
    bomb = tmp_path / "bomb.jpg"  # a small JPEG whose frame header claims 12000 x 12000 px
    header = bytearray(data)
    frame = header.index(b"\xff\xc0")  # baseline start-of-frame: length, precision, height, width
    header[frame + 5 : frame + 9] = (12000).to_bytes(2, "big") * 2
    bomb.write_bytes(bytes(header))
    for path, message in ((cut, "truncated JPEG"), (unended, "cannot be decoded"), (bomb, "12000x12000 px")):
        record = Sample(path, path.name, (0, 0, 5, 5), "x", "train", "0", 0)
        with pytest.raises(BadImageError, match=f"{path.name}: .*{message}"), warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            to_device_batch(_batch([record], augment_on), CONFIG, CPU)


def test_augment_on_auto_is_the_device_on_cuda_and_the_workers_on_cpu():
    assert resolve_augment_on("auto", torch.device("cuda", 0)) == "device"
    assert resolve_augment_on("auto", CPU) == "workers"
    assert resolve_augment_on("workers", torch.device("cuda", 0)) == "workers"
    with pytest.raises(ValueError, match="augment_on must be one of"):
        TrainConfig(dataset="shapes", distill="none", augment_on="gpu")
    config = apply_settings(
        TrainConfig(dataset="shapes", distill="none"), parse_settings(["train.augment_on=device"])
    )
    assert config.augment_on == "device"  # `--set train.augment_on=...` reaches it with no CLI edit
    with pytest.raises(ValueError, match="augment_on must be one of"):
        apply_settings(
            TrainConfig(dataset="shapes", distill="none"), parse_settings(["train.augment_on=gpu"])
        )


def test_on_cuda_jpegs_are_decoded_in_one_batched_call_on_the_device(samples, monkeypatch):
    """The CUDA branch, faked on the CPU: one `decode_jpeg(list, device=cuda)` for the batch's JPEGs."""
    calls = []

    def fake_decode_jpeg(datas, mode, device):
        calls.append((len(datas), device))
        return [real_decode_jpeg(data, mode=mode) for data in datas]

    monkeypatch.setattr(decode, "decode_jpeg", fake_decode_jpeg)
    jpegs = [s for s in samples if s.image_path.suffix == ".jpg"]
    images = [decode.read_encoded(s.image_path) for s in jpegs]
    out = decode.decode_images(images, [s.image_path for s in jpegs], torch.device("cuda", 0))
    assert calls == [(len(jpegs), torch.device("cuda", 0))]
    for sample, pixels in zip(jpegs, out, strict=True):
        assert torch.equal(pixels, F.pil_to_tensor(Image.open(sample.image_path).convert("RGB")))


def test_on_cuda_a_jpeg_cut_short_in_the_batch_is_named(samples, tmp_path, monkeypatch):
    monkeypatch.setattr(
        decode, "decode_jpeg", lambda datas, mode, device: [real_decode_jpeg(d, mode=mode) for d in datas]
    )
    data = samples[0].image_path.read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2] + b"\xff\xd9")
    paths = [samples[2].image_path, cut]
    with pytest.raises(BadImageError, match="cut.jpg: a truncated JPEG"):
        decode.decode_images([decode.read_encoded(p) for p in paths], paths, torch.device("cuda", 0))


def test_the_trainer_steps_on_device_augmented_batches_as_on_worker_ones(tmp_path):
    """`augment_on` reaches the train set, and `train_step` makes either batch ready itself: the same
    weights stepped on the same records give the same losses."""
    from conftest import tiny_run

    from pipeline.data import make_shapes
    from pipeline.engine.train import Trainer

    make_shapes(tmp_path / "shapes", n=8, seed=0, image_size=96)
    losses = {}
    for augment_on in ("workers", "device"):
        torch.manual_seed(0)
        trainer = Trainer(
            tiny_run(tmp_path / "shapes", tmp_path / augment_on, max_samples=4, augment_on=augment_on)
        )
        assert trainer.train_set.augment_on == augment_on
        batch = trainer.collate([trainer.train_set[i] for i in range(4)])
        assert ("encoded" in batch) == (augment_on == "device")
        losses[augment_on] = trainer.train_step(batch)
    for key, value in losses["workers"].items():
        assert torch.equal(value, losses["device"][key]), key
