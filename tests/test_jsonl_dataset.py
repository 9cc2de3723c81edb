"""A custom `.jsonl` dataset goes through every phase the registered ones do: inspect, cache, train."""

import json
from pathlib import Path

import pytest
from conftest import TINY_TEACHER, assert_run_checkpoint, tiny_run

from pipeline.data import load_split, make_shapes
from pipeline.engine.setup import student_config_for
from pipeline.engine.train import train
from pipeline.teacher import TeacherConfig
from pipeline.teacher.cache_job import CacheJobConfig, build_cache

pytestmark = pytest.mark.filterwarnings("ignore:.*RANDOM")


def write_jsonl_copy_of_shapes(root: Path, per_split: int = 8) -> Path:
    """The first records of a shapes dataset as one JSON-lines file in its data root."""
    path = root / "custom.jsonl"
    lines = []
    for split in ("train", "val"):
        for sample in load_split("shapes", split, root)[:per_split]:
            entry = {
                "image": sample.image_path.relative_to(root).as_posix(),
                "box": list(sample.box_xyxy),
                "expression": sample.text,
                "split": split,
            }
            lines.append(json.dumps(entry))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_jsonl_dataset_caches_and_trains_one_epoch_end_to_end(tmp_path):
    make_shapes(tmp_path / "data", n=12, seed=0)
    dataset = str(write_jsonl_copy_of_shapes(tmp_path / "data"))
    store = build_cache(
        CacheJobConfig(
            dataset=dataset,
            data_root=tmp_path / "unused",
            teacher=TeacherConfig(model=TINY_TEACHER, pretrained="none", allow_random=True),
            out=tmp_path / "store",
            decode_workers=0,
            progress=False,
        )
    )
    config = tiny_run(
        tmp_path / "unused",  # a JSON-lines file's images are relative to the file
        tmp_path / "run",
        store=store,
        dataset=dataset,
        epochs=1,
        lr_drop=None,
        max_samples=None,
        gallery_size=2,
    )
    assert student_config_for(config).max_query_len == 20
    summary = train(config)
    assert summary["epochs"] == 1 and summary["steps"] == 2  # 8 train records, batches of 4
    assert summary["results"]["val"]["n"] == len(load_split(dataset, "val")) > 0
    best = assert_run_checkpoint(tmp_path / "run" / "best.pt", epoch=1)
    assert best["student_config"]["max_query_len"] == 20 and best["train_config"]["dataset"] == dataset
