"""Precomputed frozen branches: the table is exactly the full forward pass, and a run trained on it
evaluates the same through the ordinary pixel path."""

from pathlib import Path

import pytest
import torch
from conftest import tiny_run

from pipeline.data import EvalTransform, GroundingDataset, load_split, make_shapes
from pipeline.data.device_batch import to_device_batch
from pipeline.engine import frozen_inputs
from pipeline.engine.config import TrainConfig
from pipeline.engine.evaluate import evaluate_checkpoint
from pipeline.engine.frozen_inputs import build_frozen_table, model_inputs
from pipeline.engine.train import Trainer, train
from pipeline.losses import LossConfig
from pipeline.student import build_student, make_collate, student_preset, transform_config_for

FROZEN = {"frozen_backbone_stages": 5, "freeze_text_encoder": True, "image_size": 64}
# conftest's tiny run, without distillation, on every record and the precomputed frozen branches
TABLE_RUN = dict(
    student_overrides=FROZEN, max_samples=None, gallery_size=12, augment=False, precompute_frozen=True
)


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    make_shapes(root, n=12, seed=0)
    return root


@pytest.mark.parametrize("visual_position", ["attention", "tokens"])
def test_the_table_gives_what_the_full_forward_pass_computes(shapes_root, visual_position):
    config = student_preset("tiny", **FROZEN, visual_position=visual_position)
    model = build_student(config).train()  # train mode: the frozen branches must still run as in eval
    samples = load_split("shapes", "train", shapes_root)
    transform = EvalTransform(transform_config_for(config))
    collate = make_collate(config)
    table = build_frozen_table(model, samples, transform, collate.tokenize, torch.device("cpu"), batch_size=5)
    assert table.backbone_features.shape[0] == len({s.image_key for s in samples}) < len(samples)
    assert table.text_states.shape[0] == len({s.text for s in samples})
    model.eval()
    rows = list(range(len(samples)))
    pixel_batch = collate([GroundingDataset(samples, transform)[i] for i in rows])
    pixel_batch = to_device_batch(pixel_batch, transform.config, torch.device("cpu"))
    table_batch = table.collate(rows)
    assert torch.equal(table_batch["box"], pixel_batch["box"])
    assert torch.equal(table_batch["index"], pixel_batch["index"])
    with torch.no_grad():
        from_pixels = model(**model_inputs(pixel_batch, torch.device("cpu")))
        from_table = model(**model_inputs(table_batch, torch.device("cpu")))
    for name in ("box", "vls", "cls"):
        torch.testing.assert_close(
            getattr(from_table, name), getattr(from_pixels, name), atol=1e-5, rtol=1e-4
        )


def test_a_student_that_trains_a_branch_is_refused(shapes_root):
    config = student_preset("tiny", frozen_backbone_stages=5, image_size=64)  # text encoder trains
    model = build_student(config)
    assert not model.precomputable
    with pytest.raises(ValueError, match="freeze_text_encoder"):
        build_frozen_table(model, load_split("shapes", "val", shapes_root), EvalTransform(), None, "cpu")


def test_precompute_needs_unaugmented_inputs(shapes_root):
    with pytest.raises(ValueError, match="no-augment"):
        TrainConfig(dataset="shapes", data_root=shapes_root, distill="none", precompute_frozen=True)


def test_a_run_on_the_table_evaluates_the_same_through_pixels(shapes_root, tmp_path):
    """Its final results come from best.pt, and `eval` of best.pt through pixels gives the same."""
    summary = train(tiny_run(shapes_root, tmp_path / "run", **TABLE_RUN))
    assert summary["steps"] > 2
    through_pixels = evaluate_checkpoint(
        tmp_path / "run" / "best.pt", shapes_root, None, ["val", "test"], 4, "cpu", False
    )
    for split in ("val", "test"):
        assert through_pixels[split]["n"] == summary["results"][split]["n"]
        assert through_pixels[split]["miou"] == pytest.approx(summary["results"][split]["miou"], abs=1e-5)


def _table_run(shapes_root: Path, out: Path, **changes) -> TrainConfig:
    """One epoch on the table, kept in a `frozen` folder beside `out` for the next run."""
    settings = dict(TABLE_RUN, epochs=1, lr_drop=1, frozen_cache=out.parent / "frozen")
    return tiny_run(shapes_root, out, **{**settings, **changes})


def test_runs_that_differ_only_in_training_share_the_saved_tables(shapes_root, tmp_path, monkeypatch):
    first = Trainer(_table_run(shapes_root, tmp_path / "a"))
    saved = sorted(p.name for p in (tmp_path / "frozen").iterdir())
    # the train split's table and its image part; eval splits are built when first used
    assert len(saved) == 2 and all(name.startswith("train-") for name in saved)
    assert sum(name.startswith("train-images-") for name in saved) == 1

    def no_build(*args, **kwargs):
        raise AssertionError("a saved table was computed again")

    monkeypatch.setattr(frozen_inputs, "build_frozen_table", no_build)
    second = Trainer(_table_run(shapes_root, tmp_path / "b", lr=1e-3, loss=LossConfig(box="l1")))
    mine, theirs = first.frozen_tables["train"], second.frozen_tables["train"]
    assert torch.equal(mine.backbone_features, theirs.backbone_features)
    assert torch.equal(mine.text_states, theirs.text_states)
    assert torch.equal(mine.box, theirs.box)
    with pytest.raises(AssertionError, match="computed again"):  # other records: another table
        Trainer(_table_run(shapes_root, tmp_path / "c", max_samples=5))
    with pytest.raises(AssertionError, match="computed again"):  # other (seeded random) frozen weights
        Trainer(_table_run(shapes_root, tmp_path / "e", seed=3))
    with pytest.raises(AssertionError, match="computed again"):  # other frozen-branch settings
        Trainer(_table_run(shapes_root, tmp_path / "d", student_overrides={**FROZEN, "image_size": 96}))


def test_a_run_with_other_texts_reads_the_saved_backbone_maps(shapes_root, tmp_path, monkeypatch):
    """The demo's image-only control (blank texts) computes only its text part."""
    student = Trainer(_table_run(shapes_root, tmp_path / "student"))

    def no_backbone(*args, **kwargs):
        raise AssertionError("the backbone ran again")

    monkeypatch.setattr(frozen_inputs, "build_image_table", no_backbone)
    control = Trainer(_table_run(shapes_root, tmp_path / "control", blank_text=True))
    mine, theirs = student.frozen_tables["train"], control.frozen_tables["train"]
    assert torch.equal(mine.backbone_features, theirs.backbone_features)
    assert torch.equal(mine.image_row, theirs.image_row) and torch.equal(mine.box, theirs.box)
    assert theirs.text_states.shape[0] == 1 < mine.text_states.shape[0]  # the one blank text
    with pytest.raises(AssertionError, match="backbone ran again"):  # other frozen weights: other maps
        Trainer(_table_run(shapes_root, tmp_path / "other", blank_text=True, seed=3))


def test_a_fully_frozen_branch_stays_in_eval_mode():
    """Even with trainable-style BatchNorm (freeze_bn=False): batch statistics would break the table."""
    model = build_student(student_preset("tiny", **FROZEN, freeze_bn=False)).train()
    assert model.precomputable
    assert not model.backbone.training and not model.text_encoder.training
    assert model.vl_encoder.training
    trains_its_backbone = build_student(student_preset("tiny", image_size=64)).train()
    assert trains_its_backbone.backbone.training
