"""The synthetic shapes dataset: deterministic bytes, unambiguous expressions, loadable as a dataset."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data import load_pickle, load_split, make_shapes, validate_samples
from pipeline.data.shapes import COLOURS, SHAPES


def _digests(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    make_shapes(root, n=40, seed=7)
    return root


def test_same_seed_same_bytes_other_seed_other_bytes(shapes_root: Path, tmp_path: Path) -> None:
    summary = make_shapes(tmp_path / "again", n=40, seed=7)
    assert _digests(tmp_path / "again") == _digests(shapes_root)
    make_shapes(tmp_path / "other", n=40, seed=8)
    assert _digests(tmp_path / "other") != _digests(shapes_root)
    assert summary["images"] == 40
    assert {split: info["images"] for split, info in summary["splits"].items()} == {
        "train": 32,
        "val": 4,
        "test": 4,
    }


def test_loads_as_a_dataset_and_every_expression_is_unique_in_its_image(shapes_root: Path) -> None:
    by_image: dict[str, list[str]] = defaultdict(list)
    images_per_split = {}
    for split in ("train", "val", "test"):
        samples = load_split("shapes", split, shapes_root)
        assert validate_samples(samples).ok
        images_per_split[split] = {sample.image_key for sample in samples}
        for sample in samples:
            by_image[sample.image_key].append(sample.text)
            assert any(shape in sample.text for shape in SHAPES)
    assert not (
        images_per_split["train"] & images_per_split["val"]
        or images_per_split["train"] & images_per_split["test"]
    )
    assert all(len(texts) == len(set(texts)) for texts in by_image.values())
    assert sum(len(texts) > 1 for texts in by_image.values()) > len(by_image) / 2  # several per image


def test_boxes_hold_the_named_colour(shapes_root: Path) -> None:
    records = load_pickle(shapes_root / "splits/shapes/shapes_train.pth")
    checked = 0
    for image_file, _, box, _, attributes in records:
        colour = dict(attributes)["r2"][0]
        if colour == "none":
            continue
        x1, y1, x2, y2 = box
        with Image.open(shapes_root / "images/shapes" / image_file) as image:
            centre = np.asarray(image.convert("RGB"), dtype=float)[(y1 + y2) // 2, (x1 + x2) // 2]
        assert np.abs(centre - COLOURS[colour]).max() < 60
        checked += 1
    assert checked > 10


def test_too_few_images_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 3"):
        make_shapes(tmp_path, n=2, seed=0)
