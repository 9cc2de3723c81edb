"""The target-source interface: one class per mode, built from TARGET_SOURCES by TrainConfig.distill."""

from pathlib import Path

import pytest
import torch
from conftest import tiny_run

from pipeline.engine.config import DISTILL_MODES
from pipeline.engine.distributed import DistEnv
from pipeline.engine.setup import student_config_for
from pipeline.student import transform_config_for
from pipeline.targets.source import SourceContext, TargetSource
from pipeline.targets.sources import TARGET_SOURCES, CachedTargets, build_target_source

pytestmark = pytest.mark.filterwarnings("ignore:.*RANDOM")


def context(config) -> SourceContext:
    transform = transform_config_for(student_config_for(config))
    return SourceContext(config, torch.device("cpu"), DistEnv(), transform)


def test_every_distill_mode_has_a_source_and_nothing_else():
    assert set(TARGET_SOURCES) == set(DISTILL_MODES)


def test_the_none_source_gives_no_targets_and_keeps_no_state(shapes_root, tmp_path):
    source = build_target_source(context(tiny_run(shapes_root, tmp_path)))
    assert type(source) is TargetSource
    assert source.targets({"index": torch.tensor([0])}) == (None, None)
    assert source.parameters() == [] and source.state_dict() is None and source.views is None
    assert source.summary() == {
        "targets": "no teacher targets (no distillation)",
        "teacher_built": False,
        "teacher_fingerprint": None,
    }
    with pytest.raises(ValueError, match="keeps no checkpoint state"):
        source.load_state_dict({"w": torch.zeros(1)})


def test_the_cached_source_serves_the_stores_rows_and_names_the_store(shapes_root, store, tmp_path):
    source = build_target_source(context(tiny_run(shapes_root, tmp_path, store=store)))
    assert type(source) is CachedTargets and not source.teacher_grad and source.parameters() == []
    batch = {
        "index": torch.tensor([0, 1]),
        "flipped": torch.tensor([False, True]),
        "text_swapped": torch.tensor([False, False]),
    }
    image, text = source.targets(batch)
    expected = source.tables.lookup("train", batch["index"], batch["flipped"], batch["text_swapped"])
    assert torch.equal(image, expected[0]) and torch.equal(text, expected[1])
    assert image.shape[0] == text.shape[0] == 2
    description = source.describe()
    assert "\n" not in description
    assert description == f"cached targets from {store} (teacher clip-tiny, random weights)"
    assert source.summary()["teacher_fingerprint"] == source.tables.fingerprint


def test_the_cached_source_keeps_its_tables_on_its_device(shapes_root, store, tmp_path):
    # "meta" stands in for a GPU: the tables must be moved to the source's device once, and each
    # batch gathered there from the loader's host tensors.
    config = tiny_run(shapes_root, tmp_path, store=store)
    transform = transform_config_for(student_config_for(config))
    source = build_target_source(SourceContext(config, torch.device("meta"), DistEnv(), transform))
    assert source.tables.image_embeddings.device.type == "meta"
    assert source.tables.text_embeddings.device.type == "meta"
    batch = {
        "index": torch.tensor([0, 1]),
        "flipped": torch.tensor([False, True]),
        "text_swapped": torch.tensor([True, False]),
    }
    image, text = source.targets(batch)
    assert image.device.type == text.device.type == "meta" and image.shape[0] == text.shape[0] == 2
    # On the CPU the lookup is the plain gather it always was.
    cpu = build_target_source(context(config))
    image, text = cpu.targets(batch)
    rows = cpu.tables.rows["train"]
    assert torch.equal(
        image, cpu.tables.image_embeddings[rows["image_row"][[0, 1]], torch.tensor([0, 1])].float()
    )
    text_rows = torch.stack([rows["text_swapped_row"][0], rows["text_row"][1]])
    assert torch.equal(text, cpu.tables.text_embeddings[text_rows].float())


def test_a_mapped_table_is_one_shared_memory_map_of_the_store_table(store, tmp_path, monkeypatch):
    import tempfile

    import numpy as np

    import storage
    from pipeline.targets.store import mapped_table

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the machine's shared copy, here private
    opened = storage.FeatureStore.open(store)
    first, second = mapped_table(opened, "images"), mapped_table(opened, "images")
    assert isinstance(first, np.memmap) and first.filename == second.filename
    assert [p.name for p in tmp_path.iterdir()] == [Path(first.filename).name]  # no partial file left
    assert first.tobytes() == opened.load_table("images").tobytes()
