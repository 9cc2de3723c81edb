"""Sample validation: problem kinds, the refusal by default, and `--skip-missing` dropping."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

import pipeline.data.validate as validate_module
from pipeline.data import (
    DataProblemsError,
    MissingImagesError,
    Sample,
    load_split,
    select_samples,
    validate_samples,
)


def _sample(
    image: Path,
    box: tuple[float, float, float, float] = (10, 10, 50, 40),
    text: str = "a cat",
    index: int = 0,
):
    return Sample(image, image.name, box, text, "val", str(index), index)


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    """A good JPEG (120x90), a truncated JPEG, a PNG, a non-image and a path that does not exist."""
    good = tmp_path / "good.jpg"
    Image.new("RGB", (120, 90), (200, 30, 30)).save(good, quality=95)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    png = tmp_path / "good.png"
    Image.new("RGB", (64, 48)).save(png)
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    return {
        "good": good,
        "truncated": truncated,
        "png": png,
        "text": text,
        "missing": tmp_path / "missing.jpg",
    }


def test_problem_kinds_are_counted(images: dict[str, Path]) -> None:
    samples = [
        _sample(images["good"], index=0),
        _sample(images["missing"], index=1),
        _sample(images["missing"], index=2),
        _sample(images["truncated"], index=3),
        _sample(images["text"], index=4),
        _sample(images["good"], box=(100, 10, 130, 50), index=5),  # sticks out: clipped, kept
        _sample(images["good"], box=(10, 10, 10, 40), index=6),
        _sample(images["good"], box=(200, 10, 230, 50), index=7),  # entirely outside: nothing left
        _sample(images["png"], text="  ", index=8),
    ]
    report = validate_samples(samples)
    assert dict(report.counts) == {
        "missing_image": 2,
        "unreadable_image": 2,
        "box_outside_image": 2,
        "zero_area_box": 2,
        "empty_expression": 1,
    }
    assert report.missing_images == [images["missing"]]
    assert "truncated" in report.unreadable_images[images["truncated"]].lower()
    assert report.image_sizes[images["good"]] == (120, 90)
    assert report.examples["missing_image"] == [str(images["missing"])]


def test_each_image_is_opened_once(images: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[Path] = []
    real_probe = validate_module.probe_image
    monkeypatch.setattr(validate_module, "probe_image", lambda path: opened.append(path) or real_probe(path))
    validate_samples([_sample(images["good"], index=i) for i in range(20)] + [_sample(images["png"])])
    assert sorted(opened) == sorted([images["good"], images["png"]])
    opened.clear()
    validate_samples([_sample(images["good"])], check_images=False)
    assert opened == []


def test_missing_images_refused_by_default_and_dropped_with_skip(images: dict[str, Path]) -> None:
    samples = [
        _sample(images["good"], index=0),
        _sample(images["missing"], index=1),
        _sample(images["good"], box=(100, 10, 130, 50), index=2),
        _sample(images["good"], text="", index=3),
    ]
    report = validate_samples(samples)
    with pytest.raises(MissingImagesError, match=r"1 images are missing .*missing\.jpg.*--skip-missing"):
        select_samples(samples, report)
    kept = select_samples(samples, report, skip_missing=True)
    assert [sample.index for sample in kept] == [0, 2]
    assert kept[1].box_xyxy == (100, 10, 120, 50)  # clipped to the 120 px wide image
    assert dict(report.dropped) == {"missing_image": 1, "empty_expression": 1}
    assert (report.dropped_samples, report.clipped) == (2, 1)


def test_other_problems_without_missing_images_are_refused_too(images: dict[str, Path]) -> None:
    samples = [_sample(images["good"]), _sample(images["truncated"], index=1)]
    with pytest.raises(DataProblemsError, match="unreadable_image: 1.*--skip-missing") as caught:
        select_samples(samples, validate_samples(samples))
    assert not isinstance(caught.value, MissingImagesError)


def test_clean_samples_pass_unchanged(images: dict[str, Path]) -> None:
    samples = [_sample(images["good"], index=i) for i in range(3)]
    report = validate_samples(samples)
    assert report.ok
    assert select_samples(samples, report) == samples


def test_real_split_refuses_then_keeps_the_present_image(shared_data: Path) -> None:
    samples = load_split("refcoco", "testA", shared_data)
    report = validate_samples(samples)
    with pytest.raises(MissingImagesError) as caught:
        select_samples(samples, report)
    message = str(caught.value)
    assert "749 images are missing (5646 of 5657 samples)" in message
    assert "--skip-missing" in message and message.count("COCO_train2014_") == 5
    kept = select_samples(samples, report, skip_missing=True)
    assert len(kept) == 11 and {s.image_key for s in kept} == {"COCO_train2014_000000078583.jpg"}
    assert report.dropped["missing_image"] == 5646
    assert report.counts["box_outside_image"] == 0 and report.counts["unreadable_image"] == 0
