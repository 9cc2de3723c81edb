"""Records without a box (image-text pairs, for weak supervision): readers, validation, transforms,
dataset items and collate, and the check that a training mode gets what it needs."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data import (
    DataError,
    EvalTransform,
    GroundingCollate,
    GroundingDataset,
    MissingSupervisionError,
    Needs,
    Sample,
    SplitFormatError,
    Supervision,
    TrainTransform,
    TransformConfig,
    check_supervision,
    load_split,
    select_samples,
    validate_samples,
    write_split_file,
)
from pipeline.data.transforms import (
    apply_augment_params,
    crop_window,
    draw_augment_params,
)
from pipeline.data.validate import EMPTY_EXPRESSION, ZERO_AREA_BOX
from pipeline.errors import ExpectedError

CONFIG = TransformConfig(image_size=64)
BOX = (40.0, 10.0, 70.0, 40.0)


def _jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


# --- readers ---------------------------------------------------------------------------------------


def test_jsonl_lines_without_a_box_or_with_null_are_image_text_pairs(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "pairs.jsonl",
        [
            json.dumps({"image": "a.jpg", "expression": "a dog on grass", "split": "train"}),
            json.dumps({"image": "a.jpg", "box": None, "expression": "the dog", "split": "train", "id": 9}),
            json.dumps({"image": "b.jpg", "box": [1, 2, 30, 40], "expression": "a cup", "split": "train"}),
        ],
    )
    samples = load_split(str(path), "train")
    assert [(s.box_xyxy, s.has_box, s.sample_id, s.index) for s in samples] == [
        (None, False, "line1", 0),
        (None, False, "9", 1),
        ((1.0, 2.0, 30.0, 40.0), True, "line3", 2),
    ]


@pytest.mark.parametrize(
    "bad_box", ["[1, 2, 3]", '"1 2 3 4"', "[1, 2, 3, NaN]", "[true, 2, 3, 4]", "{}", "7"]
)
def test_a_malformed_box_is_still_a_one_line_error(tmp_path: Path, bad_box: str) -> None:
    good = json.dumps({"image": "a.jpg", "expression": "x", "split": "train"})
    bad = f'{{"image": "a.jpg", "box": {bad_box}, "expression": "x", "split": "train"}}'
    path = _jsonl(tmp_path / "bad.jsonl", [good, bad])
    with pytest.raises(SplitFormatError, match=r"bad\.jsonl:2: 'box' must be \[x1, y1, x2, y2\]") as caught:
        load_split(str(path), "train")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("dataset", "split_dir"), [("referit", "referit"), ("refcoco", "unc")])
def test_a_split_file_record_with_a_none_box_is_an_image_text_pair(
    tmp_path: Path, dataset: str, split_dir: str
) -> None:
    write_split_file(
        tmp_path / f"splits/{split_dir}/{split_dir}_val.pth",
        [
            ("a.jpg", "5.pth", None, "a pair", []),
            ("a.jpg", "6.pth", [1.0, 2.0, 3.0, 4.0], "boxed", []),
            ("b.jpg", None, "the short layout's pair"),
        ],
    )
    samples = load_split(dataset, "val", tmp_path)
    boxed = (1.0, 2.0, 3.0, 4.0) if dataset == "referit" else (1.0, 2.0, 4.0, 6.0)  # refcoco's are xywh
    assert [(s.image_key, s.box_xyxy, s.text, s.sample_id) for s in samples] == [
        ("a.jpg", None, "a pair", "5"),
        ("a.jpg", boxed, "boxed", "6"),
        ("b.jpg", None, "the short layout's pair", "2"),
    ]


@pytest.mark.parametrize("bad_box", [[1.0, 2.0, 3.0], "1 2 3 4", [1.0, 2.0, 3.0, float("inf")]])
def test_a_split_file_record_with_a_malformed_box_is_still_refused(tmp_path: Path, bad_box: object) -> None:
    write_split_file(
        tmp_path / "splits/referit/referit_val.pth",
        [("a.jpg", "5.pth", None, "a pair", []), ("a.jpg", "6.pth", bad_box, "x", [])],
    )
    with pytest.raises(
        SplitFormatError, match=r"referit_val\.pth: record 1: unknown record layout"
    ) as caught:
        load_split("referit", "val", tmp_path)
    assert "\n" not in str(caught.value)


def _write_refer(root: Path, refs: list[dict]) -> None:
    folder = root / "refer" / "refcoco"
    folder.mkdir(parents=True)
    instances = {
        "images": [{"id": 7, "file_name": "COCO_7.jpg", "width": 100, "height": 80}],
        "annotations": [
            {
                "id": 70,
                "image_id": 7,
                "bbox": [10.0, 20.0, 30.0, 40.0],
                "category_id": 1,
                "area": 1,
                "iscrowd": 0,
            }
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (folder / "instances.json").write_text(json.dumps(instances))
    with open(folder / "refs(unc).p", "wb") as file:
        pickle.dump(refs, file, protocol=2)


def _ref(ref_id: int, ann_id: int | None, sentences: list[str]) -> dict:
    return {
        "ref_id": ref_id,
        "ann_id": ann_id,
        "image_id": 7,
        "split": "val",
        "sentences": [{"sent": text, "sent_id": i} for i, text in enumerate(sentences)],
    }


def test_a_refer_ref_without_an_annotation_is_an_image_text_pair(tmp_path: Path) -> None:
    _write_refer(tmp_path, [_ref(1, None, ["a cat", "cat"]), _ref(2, 70, ["the dog"])])
    samples = load_split("refcoco", "val", tmp_path)
    assert [(s.text, s.box_xyxy, s.sample_id, s.index) for s in samples] == [
        ("a cat", None, "ref1", 0),
        ("cat", None, "ref1", 1),
        ("the dog", (10.0, 20.0, 40.0, 60.0), "70", 2),
    ]


# --- validation ------------------------------------------------------------------------------------


def test_validation_does_not_refuse_a_missing_box_but_still_a_degenerate_one(tmp_path: Path) -> None:
    image = tmp_path / "a.jpg"
    Image.new("RGB", (120, 90)).save(image)
    pair = Sample(image, "a.jpg", None, "a cat", "train", "0", 0)
    empty_pair = Sample(image, "a.jpg", None, " ", "train", "1", 1)
    flat = Sample(image, "a.jpg", (10.0, 10.0, 10.0, 40.0), "a cat", "train", "2", 2)
    report = validate_samples([pair, empty_pair, flat])
    assert report.problems == {empty_pair: (EMPTY_EXPRESSION,), flat: (ZERO_AREA_BOX,)}
    assert select_samples([pair, empty_pair, flat], report, skip_missing=True) == [pair]


# --- transforms ------------------------------------------------------------------------------------


def _scene() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))


def test_eval_transform_without_a_box_gives_the_same_pixels_and_no_box() -> None:
    image, transform = _scene(), EvalTransform(CONFIG)
    boxed, pair = transform(image, BOX, "a cat"), transform(image, None, "a cat")
    assert pair.box_cxcywh is None and boxed.box_cxcywh is not None
    assert torch.equal(pair.pixels, boxed.pixels) and pair.offsets == boxed.offsets
    assert transform.box(None, image.size) is None


def test_train_transform_without_a_box_flips_crops_and_gives_no_box() -> None:
    image, transform = _scene(), TrainTransform(TransformConfig(image_size=64, crop_prob=0.5))
    flips = crops = 0
    for seed in range(40):
        out = transform(image, None, "the left cat", np.random.default_rng(seed))
        assert out.box_cxcywh is None and out.pixels.dtype == torch.uint8 and max(out.pixels.shape) <= 64
        assert out.text == ("the right cat" if out.flipped else "the left cat")
        flips += out.flipped
    for seed in range(40):  # no spatial word: the crop branch may be taken
        params = draw_augment_params(image.size, None, "a cat", transform.config, np.random.default_rng(seed))
        out = apply_augment_params(image, None, "a cat", params, transform.config)
        assert out.box_cxcywh is None
        crops += params.crop is not None
    assert 0 < flips < 40 and 0 < crops < 40


def test_without_cropping_a_box_less_view_is_the_boxed_views_pixels() -> None:
    """No crop branch: no draw depends on the box, so both records get the same view."""
    image, transform = _scene(), TrainTransform(TransformConfig(image_size=64, crop_prob=0.0))
    for seed in range(8):
        boxed = transform(image, BOX, "a cat", np.random.default_rng(seed))
        pair = transform(image, None, "a cat", np.random.default_rng(seed))
        assert torch.equal(boxed.pixels, pair.pixels) and boxed.flipped == pair.flipped


def test_applied_params_give_the_same_pixels_with_or_without_the_box() -> None:
    image, config = _scene(), TransformConfig(image_size=64, crop_prob=1.0)
    for seed in range(8):
        params = draw_augment_params(image.size, BOX, "a cat", config, np.random.default_rng(seed))
        boxed = apply_augment_params(image, BOX, "a cat", params, config)
        pair = apply_augment_params(image, None, "a cat", params, config)
        assert pair.box_cxcywh is None and torch.equal(boxed.pixels, pair.pixels)


def test_a_box_less_crop_window_is_any_window_of_an_allowed_size() -> None:
    size_range, box = (20, 50), np.array([40.0, 10.0, 70.0, 40.0])
    outside_the_box = 0
    for seed in range(200):
        top, left, height, width = crop_window(80, 60, None, size_range, np.random.default_rng(seed))
        assert 20 <= width <= 50 and 20 <= height <= 50
        assert 0 <= left <= 80 - width and 0 <= top <= 60 - height
        outside_the_box += not (
            left <= box[0] and top <= box[1] and left + width >= box[2] and top + height >= box[3]
        )
    assert outside_the_box > 0  # not held to any box
    assert crop_window(15, 60, None, size_range, np.random.default_rng(0)) is None  # narrower than 20


# --- dataset items and collate --------------------------------------------------------------------


def _tokenize(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.ones((len(texts), 2), dtype=torch.long)
    return ids, torch.ones_like(ids, dtype=torch.bool)


@pytest.fixture
def mixed(tmp_path: Path) -> list[Sample]:
    path = tmp_path / "a.jpg"
    _scene().save(path)
    return [
        Sample(path, "a.jpg", BOX, "a cat", "train", "0", 0),
        Sample(path, "a.jpg", None, "a dog", "train", "1", 1),
        Sample(path, "a.jpg", (1.0, 2.0, 30.0, 40.0), "a cup", "train", "2", 2),
        Sample(path, "a.jpg", None, "a hat", "train", "3", 3),
    ]


@pytest.mark.parametrize("transform", [EvalTransform(CONFIG), TrainTransform(CONFIG)])
def test_items_of_box_less_records_carry_no_box(mixed: list[Sample], transform) -> None:
    item = GroundingDataset(mixed, transform, seed=1)[1]
    assert item["box"] is None and item["box_xyxy"] is None and item["pixels"].dtype == torch.uint8


def test_a_batch_without_boxes_has_none_and_a_mixed_one_has_zeros_where_absent(mixed: list[Sample]) -> None:
    dataset, collate = GroundingDataset(mixed, TrainTransform(CONFIG), seed=1), GroundingCollate(_tokenize)
    items = [dataset[i] for i in range(4)]

    pairs = collate([items[1], items[3]])
    assert pairs["box"] is None and pairs["box_xyxy"] is None
    assert pairs["has_box"].tolist() == [False, False] and pairs["pixels"].shape == (2, 3, 64, 64)

    batch = collate(items)
    assert batch["has_box"].tolist() == [True, False, True, False]
    assert torch.equal(batch["box"][[0, 2]], torch.stack([items[0]["box"], items[2]["box"]]))
    assert torch.equal(batch["box"][[1, 3]], torch.zeros(2, 4))
    assert torch.equal(batch["box_xyxy"], torch.tensor([BOX, [0.0] * 4, [1.0, 2.0, 30.0, 40.0], [0.0] * 4]))

    boxed = collate([items[0], items[2]])
    assert boxed["has_box"].tolist() == [True, True]
    assert torch.equal(boxed["box"], torch.stack([items[0]["box"], items[2]["box"]]))


# --- what a training mode needs -------------------------------------------------------------------


def _records(boxless: dict[int, str]) -> list[Sample]:
    """40 records; those at the positions of `boxless` have no box and the given id."""
    return [
        Sample(Path("x.jpg"), "x.jpg", None if i in boxless else BOX, "t", "train", boxless.get(i, str(i)), i)
        for i in range(40)
    ]


def test_check_supervision_names_the_box_less_records_and_counts_them() -> None:
    samples = _records({4: "117", 9: "131", 17: "17"})
    with pytest.raises(MissingSupervisionError) as caught:
        check_supervision(samples, needs_box=True, split="train")
    assert str(caught.value) == (
        "fully supervised training needs a box on every train record; 3 of 40 have none: "
        "#4 (id 117), #9 (id 131), #17"
    )
    assert isinstance(caught.value, ExpectedError) and isinstance(caught.value, DataError)


def test_check_supervision_counts_the_ones_it_does_not_name() -> None:
    samples = _records({2: "a\nb", 5: "5", 6: "6", 30: "30", 31: "31"})
    with pytest.raises(MissingSupervisionError) as caught:
        check_supervision(samples, True, "val", purpose="evaluation")
    assert str(caught.value) == (
        "evaluation needs a box on every val record; 5 of 40 have none: #2 (id a b), #5, #6 and 2 more"
    )


def test_a_mode_states_what_it_needs() -> None:
    samples = _records({4: "4"})
    assert Supervision.FULL.needs == Needs(box=True) and Supervision.WEAK.needs == Needs(box=False)
    Supervision.WEAK.check(samples, "train")
    check_supervision(samples, needs_box=False, split="train")
    Supervision.FULL.check(_records({}), "train")
    with pytest.raises(
        MissingSupervisionError, match=r"^fully supervised training .* 1 of 40 have none: #4$"
    ):
        Supervision.FULL.check(samples, "train")
