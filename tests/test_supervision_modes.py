"""Supervision is declared by the data: a run whose records lack what its training mode needs stops
with one line naming them, before any image is read; a box-less pair caches like any record."""

import json
from pathlib import Path

import pytest

from pipeline.data import MissingSupervisionError, load_split, make_shapes
from pipeline.data.supervision import Supervision
from pipeline.engine.config import TrainConfig
from pipeline.engine.train import Trainer
from pipeline.student import STUDENTS
from pipeline.targets import load_targets
from pipeline.teacher import TeacherConfig
from pipeline.teacher.cache_job import CacheJobConfig, build_cache

REPO = Path(__file__).resolve().parents[1]
TINY_TEACHER = str(REPO / "pipeline" / "configs" / "teacher" / "clip-tiny.json")
pytestmark = pytest.mark.filterwarnings("ignore:.*RANDOM")


def pairs_file(root: Path, boxless: dict[str, set[int]]) -> Path:
    """Shapes records as JSON lines; the records numbered in `boxless[split]` carry no box."""
    lines = []
    for split in ("train", "val"):
        for position, sample in enumerate(load_split("shapes", split, root)[:6]):
            entry = {"image": sample.image_path.relative_to(root).as_posix(), "expression": sample.text}
            if position not in boxless.get(split, set()):
                entry["box"] = list(sample.box_xyxy)
            lines.append(json.dumps({**entry, "split": split}))
    path = root / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(dataset: Path, out: Path) -> TrainConfig:
    return TrainConfig(
        dataset=str(dataset),
        data_root=out / "unused",
        out=out,
        student="tiny",
        student_overrides={"image_size": 64},
        distill="none",
        epochs=1,
        batch_size=2,
        workers=0,
        progress=False,
    )


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    make_shapes(root, n=12, seed=0)
    return root


def test_every_registered_student_declares_full_supervision():
    assert {name: arch.supervision for name, arch in STUDENTS.items()} == {
        "transvg": Supervision.FULL,
        "lgrnet": Supervision.FULL,
    }


def test_box_less_train_records_stop_a_box_regressing_run_naming_them(shapes, tmp_path):
    dataset = pairs_file(shapes, {"train": {1, 4}})
    with pytest.raises(MissingSupervisionError) as error:
        Trainer(run(dataset, tmp_path / "run"))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("fully supervised training needs a box on every train record; 2 of 6")
    assert message.endswith("#1 (id line2), #4 (id line5)")  # split index and JSONL line
    assert not (tmp_path / "run").exists()  # nothing written


def test_box_less_eval_records_stop_the_run_too(shapes, tmp_path):
    dataset = pairs_file(shapes, {"val": {0}})
    with pytest.raises(
        MissingSupervisionError,
        match=r"^evaluation needs a box on every val record; 1 of 4 have none: #0 \(id line7\)$",
    ):
        Trainer(run(dataset, tmp_path / "run"))


def test_a_box_less_pair_is_cached_like_any_record(shapes, tmp_path):
    dataset = pairs_file(shapes, {"train": {2}})
    store = build_cache(
        CacheJobConfig(
            dataset=str(dataset),
            data_root=tmp_path / "unused",
            teacher=TeacherConfig(model=TINY_TEACHER, pretrained="none", allow_random=True),
            out=tmp_path / "store",
            decode_workers=0,
            progress=False,
        )
    )
    from pipeline.data import dataset_fingerprint

    targets = load_targets(store, ["train"], dataset_fingerprint(str(dataset), tmp_path / "unused"))
    rows = targets.rows["train"]
    assert int(rows["image_row"][2]) >= 0 and int(rows["text_row"][2]) >= 0
