"""The trainer does not trust a store blindly: non-finite or all-zero target rows stop it at load."""

from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_TEACHER, tiny_run

import storage
from pipeline.data import dataset_fingerprint, make_shapes
from pipeline.engine.train import train
from pipeline.targets import BadTargetsError, load_targets
from pipeline.teacher import TeacherConfig
from pipeline.teacher.cache_job import CacheJobConfig, build_cache

pytestmark = pytest.mark.filterwarnings("ignore:.*RANDOM")


@pytest.fixture(scope="module")
def shapes_store(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("shapes")
    make_shapes(root, n=8, seed=0, image_size=64)
    store = build_cache(
        CacheJobConfig(
            dataset="shapes",
            data_root=root,
            teacher=TeacherConfig(model=TINY_TEACHER, pretrained="none", allow_random=True),
            out=tmp_path_factory.mktemp("cache") / "store",
            decode_workers=0,
            progress=False,
        )
    )
    return root, store


def poison(monkeypatch, table: str, row: int, value: float, variant: int | None = None) -> None:
    """Serve `table` with one row (or one variant of it) replaced, as a damaged copy of the store would."""
    real = storage.FeatureStore.load_table

    def damaged(self, name, dtype=None):
        values = real(self, name, dtype).copy()
        if name == table:
            values[row if variant is None else (row, variant)] = value
        return values

    monkeypatch.setattr(storage.FeatureStore, "load_table", damaged)


@pytest.mark.parametrize(
    ("table", "row", "value", "variant", "what"),
    [
        ("images", 2, np.nan, 1, "images row 2 ('000002.jpg') is not finite"),
        ("images", 1, 0.0, None, "images row 1 ('000001.jpg') is all zeros"),
        ("texts", 0, np.inf, None, "texts row 0"),
    ],
)
def test_a_bad_target_row_is_named_with_its_store(
    shapes_store, monkeypatch, table, row, value, variant, what
):
    root, store = shapes_store
    fingerprint = dataset_fingerprint("shapes", root)
    assert load_targets(store, ["train"], fingerprint).image_embeddings.isfinite().all()
    poison(monkeypatch, table, row, value, variant)
    with pytest.raises(BadTargetsError, match=rf"{store}: {what}".replace("(", r"\(").replace(")", r"\)")):
        load_targets(store, ["train"], fingerprint)


def test_the_trainer_stops_before_training_on_a_bad_store(shapes_store, monkeypatch, tmp_path):
    root, store = shapes_store
    poison(monkeypatch, "texts", 3, 0.0)
    config = tiny_run(
        root, tmp_path / "run", store=store, student_overrides={}, epochs=1, lr_drop=None, max_samples=None,
        gallery_size=12,
    )  # fmt: skip
    with pytest.raises(BadTargetsError, match="texts row 3"):
        train(config)
    assert not (tmp_path / "run" / "last.pt").exists()
