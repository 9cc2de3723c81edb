"""The target-source interface: one class per mode, built from TARGET_SOURCES by TrainConfig.distill."""

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
