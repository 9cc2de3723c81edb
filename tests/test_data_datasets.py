"""Registry, ReSC split files (real data), refer toolkit format and JSON-lines datasets."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from pipeline.data import (
    DATASET_NAMES,
    SplitFormatError,
    SplitNotFoundError,
    UnknownDatasetError,
    available_splits,
    dataset_files,
    dataset_spec,
    load_pickle,
    load_split,
    validate_samples,
    write_split_file,
)

# Record counts per split file, from ../shared/data/README.md.
EXPECTED_RECORDS = {
    ("refcoco", "val"): 10_834,
    ("refcoco", "testA"): 5_657,
    ("refcoco", "testB"): 5_095,
    ("refcoco+", "val"): 10_758,
    ("refcoco+", "testA"): 5_726,
    ("refcoco+", "testB"): 4_889,
    ("refcocog", "val"): 4_896,
    ("referit", "val"): 5_842,
    ("flickr", "val"): 14_433,
    ("flickr", "test"): 14_481,
}
COCO_SPLITS_WITH_IMAGES = [key for key in EXPECTED_RECORDS if key[0].startswith("refcoco")]
PRESENT_COCO_IMAGES = {
    f"COCO_train2014_000000{number}.jpg" for number in ("078583", "131074", "134420", "033017")
}


@pytest.mark.parametrize(("dataset", "split"), list(EXPECTED_RECORDS))
def test_record_counts_match_the_split_files(shared_data: Path, dataset: str, split: str) -> None:
    samples = load_split(dataset, split, shared_data)
    spec = dataset_spec(dataset)
    assert (
        len(samples)
        == EXPECTED_RECORDS[(dataset, split)]
        == len(load_pickle(spec.split_file(shared_data, split)))
    )
    assert [sample.index for sample in samples] == list(range(len(samples)))
    assert {sample.split for sample in samples} == {split}
    assert all(sample.image_path == shared_data / spec.image_dir / sample.image_key for sample in samples)


@pytest.mark.parametrize(
    ("dataset", "split", "first_box", "first_id", "first_text"),
    [
        (
            "refcoco",
            "testA",
            (303.58, 69.03, 303.58 + 293.29, 69.03 + 425.79),
            "482127",
            "guy flopping around on the right",
        ),
        ("referit", "val", (322.0, 303.0, 359.0, 372.0), "9739_7", "right black bag"),
        ("flickr", "val", (53.0, 45.0, 110.0, 203.0), "0", "man"),
    ],
)
def test_record_layouts_become_xyxy_samples(
    shared_data: Path, dataset: str, split: str, first_box: tuple, first_id: str, first_text: str
) -> None:
    first = load_split(dataset, split, shared_data)[0]
    assert first.box_xyxy == pytest.approx(first_box)
    assert (first.sample_id, first.text) == (first_id, first_text)


def test_present_images_are_found_and_absent_ones_reported(shared_data: Path) -> None:
    with_image = []
    for dataset, split in COCO_SPLITS_WITH_IMAGES:
        samples = load_split(dataset, split, shared_data)
        report = validate_samples(samples, check_images=False)
        present = [sample for sample in samples if sample not in report.problems]
        assert report.counts["missing_image"] == len(samples) - len(present)
        with_image += present
    assert len(with_image) == 44  # the README's count across RefCOCO / RefCOCO+ / RefCOCOg
    assert {sample.image_key for sample in with_image} == PRESENT_COCO_IMAGES


def test_registry_and_available_splits(shared_data: Path) -> None:
    assert set(DATASET_NAMES) == {
        "refcoco",
        "refcoco+",
        "refcocog",
        "refcocog-google",
        "referit",
        "flickr",
        "shapes",
    }
    assert dataset_spec("refcocog").max_query_len == 40
    assert dataset_spec("refcoco+").split_dir == "unc+"
    assert available_splits("refcoco", shared_data) == ["val", "testA", "testB"]
    assert available_splits("flickr", shared_data) == ["val", "test"]
    assert available_splits("refcocog-google", shared_data) == []
    assert [path.name for path in dataset_files("refcoco", shared_data)] == [
        "unc_val.pth",
        "unc_testA.pth",
        "unc_testB.pth",
    ]


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(UnknownDatasetError, match="refcoco.*flickr.*jsonl"):
        dataset_spec("refcocoo")


def test_missing_split_names_what_was_looked_for(shared_data: Path) -> None:
    with pytest.raises(SplitNotFoundError, match=r"unc_train\.pth.*refs\(unc\)\.p"):
        load_split("refcoco", "train", shared_data)
    with pytest.raises(SplitNotFoundError, match="testA, testB"):
        load_split("refcoco", "test", shared_data)


def _write_refer(root: Path, refs: list[dict]) -> None:
    folder = root / "refer" / "refcoco"
    folder.mkdir(parents=True)
    instances = {
        "images": [{"id": 7, "file_name": "COCO_train2014_000000000007.jpg", "width": 100, "height": 80}],
        "annotations": [
            {
                "id": 70,
                "image_id": 7,
                "bbox": [10.0, 20.0, 30.0, 40.0],
                "category_id": 1,
                "area": 1200,
                "iscrowd": 0,
            },
            {
                "id": 71,
                "image_id": 7,
                "bbox": [50.0, 5.0, 20.0, 10.0],
                "category_id": 1,
                "area": 200,
                "iscrowd": 0,
            },
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (folder / "instances.json").write_text(json.dumps(instances))
    with open(folder / "refs(unc).p", "wb") as file:
        pickle.dump(refs, file, protocol=2)


def _ref(ref_id: int, ann_id: int, split: str, sentences: list[str]) -> dict:
    return {
        "ref_id": ref_id,
        "ann_id": ann_id,
        "image_id": 7,
        "split": split,
        "file_name": f"COCO_train2014_000000000007_{ann_id}.jpg",
        "sentences": [{"sent": text, "raw": text.upper(), "sent_id": i} for i, text in enumerate(sentences)],
    }


def test_refer_format_one_sample_per_sentence(tmp_path: Path) -> None:
    _write_refer(
        tmp_path,
        [_ref(1, 70, "val", ["left cat", "cat"]), _ref(2, 71, "testA", ["dog"]), _ref(3, 71, "val", ["dog"])],
    )
    samples = load_split("refcoco", "val", tmp_path)
    assert [(s.text, s.box_xyxy, s.sample_id, s.index) for s in samples] == [
        ("left cat", (10.0, 20.0, 40.0, 60.0), "70", 0),
        ("cat", (10.0, 20.0, 40.0, 60.0), "70", 1),
        ("dog", (50.0, 5.0, 70.0, 15.0), "71", 2),
    ]
    assert samples[0].image_key == "COCO_train2014_000000000007.jpg"
    assert samples[0].image_path == tmp_path / "images/mscoco/train2014/COCO_train2014_000000000007.jpg"
    assert available_splits("refcoco", tmp_path) == ["train", "val", "testA", "testB"]
    assert [path.name for path in dataset_files("refcoco", tmp_path)] == ["refs(unc).p", "instances.json"]


def test_resc_split_file_takes_precedence_over_refer(tmp_path: Path) -> None:
    _write_refer(tmp_path, [_ref(1, 70, "val", ["cat"])])
    write_split_file(
        tmp_path / "splits/unc/unc_val.pth", [("a.jpg", "5.pth", [1.0, 2.0, 3.0, 4.0], "from resc", [])]
    )
    (sample,) = load_split("refcoco", "val", tmp_path)
    assert (sample.text, sample.box_xyxy) == ("from resc", (1.0, 2.0, 4.0, 6.0))


def test_refer_with_a_dangling_annotation_id_is_a_clear_error(tmp_path: Path) -> None:
    _write_refer(tmp_path, [_ref(1, 999, "val", ["cat"])])
    with pytest.raises(SplitFormatError, match=r"refs\(unc\)\.p: ref 0: 999"):
        load_split("refcoco", "val", tmp_path)


def _write_jsonl(path: Path, entries: list[object]) -> Path:
    path.write_text(
        "\n".join(entry if isinstance(entry, str) else json.dumps(entry) for entry in entries) + "\n"
    )
    return path


def test_jsonl_reader(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "mine.jsonl",
        [
            {"image": "imgs/a.jpg", "box": [1, 2, 30, 40], "expression": "the cup", "split": "train"},
            "",
            {"image": "imgs/b.jpg", "box": [5, 5, 9, 9], "expression": "a dog", "split": "val", "id": "d1"},
            {"image": "imgs/a.jpg", "box": [0, 0, 3, 3], "expression": "the plate", "split": "train"},
        ],
    )
    train = load_split(str(path), "train")
    assert [(s.image_key, s.box_xyxy, s.text, s.index, s.sample_id) for s in train] == [
        ("imgs/a.jpg", (1.0, 2.0, 30.0, 40.0), "the cup", 0, "line1"),
        ("imgs/a.jpg", (0.0, 0.0, 3.0, 3.0), "the plate", 1, "line4"),
    ]
    assert train[0].image_path == tmp_path / "imgs" / "a.jpg"
    assert load_split(path, "val")[0].sample_id == "d1"
    assert available_splits(str(path)) == ["train", "val"]
    assert dataset_files(str(path)) == [path]
    with pytest.raises(SplitNotFoundError, match="available: train, val"):
        load_split(str(path), "test")


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"image": "a.jpg", "box": [1, 2, 3], "expression": "x", "split": "train"}', "'box' must be"),
        ('{"image": "a.jpg", "box": [1, 2, 3, 4], "split": "train"}', "missing field.*expression"),
        ("{not json", "not valid JSON"),
        (
            '{"image": "/abs/a.jpg", "box": [1, 2, 3, 4], "expression": "x", "split": "train"}',
            "must be relative",
        ),
    ],
)
def test_jsonl_bad_line_names_file_and_line(tmp_path: Path, bad_line: str, message: str) -> None:
    good = {"image": "a.jpg", "box": [1, 2, 3, 4], "expression": "x", "split": "train"}
    path = _write_jsonl(tmp_path / "bad.jsonl", [good, bad_line])
    with pytest.raises(SplitFormatError, match=rf"bad\.jsonl:2: .*{message}"):
        load_split(str(path), "train")


def test_split_file_with_an_unknown_layout_names_the_record(tmp_path: Path) -> None:
    write_split_file(
        tmp_path / "splits/referit/referit_val.pth",
        [("a.jpg", "1.pth", [1, 2, 3, 4], "ok", []), ("a.jpg", 5)],
    )
    with pytest.raises(SplitFormatError, match=r"referit_val\.pth: record 1"):
        load_split("referit", "val", tmp_path)
