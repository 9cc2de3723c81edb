"""Precomputed frozen branches: the table is exactly the full forward pass, and a run trained on it
evaluates the same through the ordinary pixel path."""

import json
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from conftest import run_torchrun, tiny_run
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.data import EvalTransform, GroundingDataset, load_split, make_shapes
from pipeline.data.device_batch import to_device_batch
from pipeline.engine import frozen_inputs
from pipeline.engine.config import TrainConfig
from pipeline.engine.evaluate import evaluate_checkpoint, summarize
from pipeline.engine.frozen_inputs import FrozenTablesTooLarge, build_frozen_table, model_inputs
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


# At scale: a size estimate and a budget before any build; tables built once per node, memory-mapped ---


def _table_bytes(table) -> int:
    return sum(
        value.numel() * value.element_size()
        for value in (getattr(table, field.name) for field in fields(table))
        if isinstance(value, torch.Tensor)
    )


def _mapped_files(tensor: torch.Tensor) -> set[str]:
    """The files whose mapping holds the tensor's data (Linux: /proc/self/maps)."""
    address, found = tensor.data_ptr(), set()
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        start, end = (int(value, 16) for value in parts[0].split("-"))
        if start <= address < end and len(parts) == 6:
            found.add(parts[5])
    return found


def _no_build(monkeypatch) -> None:
    def no_build(*args, **kwargs):
        raise AssertionError("a table was built")

    for name in ("build_image_table", "build_frozen_table", "build_view_table"):
        monkeypatch.setattr(frozen_inputs, name, no_build)


def test_a_run_over_the_memory_budget_is_refused_before_any_backbone_pass(shapes_root, tmp_path, monkeypatch):
    _no_build(monkeypatch)
    with pytest.raises(FrozenTablesTooLarge, match="over the 0.0 GiB budget"):
        Trainer(_table_run(shapes_root, tmp_path / "run", frozen_budget_gb=1e-6))
    assert not (tmp_path / "frozen").exists()
    args = ["train", "shapes", "--data-root", str(shapes_root), "--out", str(tmp_path / "cli"), "--distill"]
    args += ["none", "--student", "tiny", "--image-size", "64", "--workers", "0", "--device", "cpu"]
    args += ["--no-augment", "--precompute-frozen", "--frozen-budget-gb", "1e-6", "--epochs", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "budget" in result.output and "Traceback" not in result.output


def test_the_estimate_is_the_built_tables_bytes(shapes_root, tmp_path, caplog):
    caplog.set_level("INFO", logger="pipeline.engine.frozen_inputs")
    trainer = Trainer(_table_run(shapes_root, tmp_path / "run", frozen_budget_gb=100.0))
    estimate = trainer.frozen_tables.estimate()
    assert set(estimate) == {"train", "val", "test"}
    for split, size in estimate.items():
        assert size.bytes == _table_bytes(trainer.frozen_tables[split]), split
    lines = [record.message for record in caplog.records if "GiB" in record.message]
    assert len(lines) == 1 and "float32" in lines[0]  # one line, before the first table


def test_a_saved_table_is_memory_mapped_and_bf16_when_asked(shapes_root, tmp_path):
    fp32 = Trainer(_table_run(shapes_root, tmp_path / "fp32")).frozen_tables["train"]
    bf16 = Trainer(_table_run(shapes_root, tmp_path / "bf16", frozen_dtype="bfloat16")).frozen_tables["train"]
    assert fp32.backbone_features.dtype == torch.float32
    assert bf16.backbone_features.dtype == bf16.text_states.dtype == torch.bfloat16
    saved = {str(path) for path in (tmp_path / "frozen").glob("train-*.pt") if "images" not in path.name}
    assert len(saved) == 2  # the dtype is part of the table's key
    for table in (fp32, bf16):
        for tensor in (table.backbone_features, table.text_states, table.image_row):
            assert _mapped_files(tensor) & saved, "not mapped from the saved file"
    # bf16 storage agrees with the exact fp32 table to bf16 rounding, and the student reads it as fp32
    torch.testing.assert_close(bf16.backbone_features.float(), fp32.backbone_features, rtol=8e-3, atol=1e-2)
    torch.testing.assert_close(bf16.text_states.float(), fp32.text_states, rtol=8e-3, atol=1e-2)
    inputs = model_inputs(bf16.collate([0, 1]), torch.device("cpu"))
    assert inputs["backbone_features"].dtype == inputs["text_states"].dtype == torch.float32


def test_auto_storage_is_bf16_only_under_bf16_autocast_on_cuda():
    assert frozen_inputs.stored_dtype("auto", torch.device("cpu"), amp=True) == torch.float32
    assert frozen_inputs.stored_dtype("auto", torch.device("cuda:0"), amp=True) == torch.bfloat16
    assert frozen_inputs.stored_dtype("auto", torch.device("cuda:0"), amp=False) == torch.float32
    with pytest.raises(ValueError, match="frozen-dtype"):
        TrainConfig(dataset="shapes", distill="none", frozen_dtype="fp8")


def test_two_ranks_share_one_table_built_by_local_rank_0(shapes_root, tmp_path):
    out, folder = tmp_path / "ddp", tmp_path / "frozen"
    args = ["train_student.py", "shapes", "--data-root", shapes_root, "--out", out, "--distill", "none"]
    args += [
        "--student",
        "tiny",
        "--image-size",
        "64",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--workers",
        "0",
    ]
    args += ["--device", "cpu", "--no-augment", "--precompute-frozen", "--frozen-cache", folder]
    for field, value in FROZEN.items():
        if field != "image_size":
            args += ["--student-set", f"{field}={str(value).lower()}"]
    done = run_torchrun(2, args)
    built = [line for line in done.stderr.splitlines() if "built by rank" in line]
    tables = sorted(path.name for path in folder.iterdir() if "-images-" not in path.name)
    assert [path.suffix for path in folder.iterdir()] == [".pt"] * len(list(folder.iterdir()))  # no partials
    assert len(built) == len(tables) == 3 and all(
        "built by rank 0 " in line for line in built
    )  # train, val, test
    summary = json.loads((out / "summary.json").read_text())
    single = Trainer(TrainConfig.from_dict(json.loads((out / "config.json").read_text())))
    single.model.load_state_dict(torch.load(out / "last.pt", weights_only=False)["model"])
    for split in ("val", "test"):  # the single process reads the same files and scores the same
        expected = summarize(single.evaluate(split))
        assert summary["results"][split]["n"] == expected["n"]
        assert summary["results"][split]["miou"] == pytest.approx(expected["miou"], abs=1e-4)


def test_a_table_is_filled_in_place_not_concatenated(shapes_root, monkeypatch):
    """Concatenating per-batch maps would hold every map twice at the end of the build."""
    config = student_preset("tiny", **FROZEN)
    samples = load_split("shapes", "train", shapes_root)
    concatenated, cat = [], torch.cat

    def spy(tensors, *args, **kwargs):
        out = cat(tensors, *args, **kwargs)
        if len(tensors) > 1 and out.dim() >= 3:  # maps [N, C, h, w], pads [N, h, w], states [N, L, H]
            concatenated.append(tuple(out.shape))
        return out

    monkeypatch.setattr(torch, "cat", spy)
    transform = EvalTransform(transform_config_for(config))
    tokenize = make_collate(config).tokenize
    table = build_frozen_table(build_student(config), samples, transform, tokenize, "cpu", batch_size=3)
    assert table.backbone_features.shape[0] > 3 and table.text_states.shape[0] > 3  # several batches
    assert concatenated == []
