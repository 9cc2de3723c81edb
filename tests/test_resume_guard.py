"""`--resume` continues the same run or refuses before writing; metrics and checkpoints stay honest."""

import json
from functools import partial
from pathlib import Path

import pytest
import torch
from conftest import tiny_run
from typer.testing import CliRunner

import pipeline.engine.checkpoint as checkpoint_module
import pipeline.engine.train as train_module
from pipeline.cli import app
from pipeline.data import make_shapes
from pipeline.engine.checkpoint import load_checkpoint
from pipeline.engine.distributed import DistEnv
from pipeline.engine.resume import ResumeMismatchError
from pipeline.engine.train import train

runner = CliRunner()


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    make_shapes(root, n=12, seed=0, image_size=64)
    return root


# conftest's tiny run without distillation: one epoch (lr drop at 5), 2 gallery images
run = partial(tiny_run, epochs=1, lr_drop=5, gallery_size=2)


def metric_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_resume_without_a_checkpoint_is_an_error_and_writes_nothing(shapes_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="--resume: no checkpoint at"):
        train(run(shapes_root, tmp_path / "run", resume=True))
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def finished(shapes_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    train(run(shapes_root, out))
    return out


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"student": "small"}, "architecture: student"),
        ({"student_overrides": {"image_size": 96}}, "architecture: student_overrides"),
        ({"max_samples": 6}, "data: max_samples"),
        ({"dataset": "refcoco"}, "data: dataset"),
        ({"lr": 5e-4}, "optimisation: lr"),
        ({"lr_drop": 1}, "optimisation: lr_drop"),
        ({"seed": 1}, "optimisation: seed"),
    ],
)
def test_resume_refuses_another_run_before_writing_anything(shapes_root, finished, changes, reason):
    before = {name: (finished / name).read_bytes() for name in ("config.json", "metrics.jsonl", "last.pt")}
    with pytest.raises(ResumeMismatchError, match=reason):
        train_module.Trainer(run(shapes_root, finished, resume=True, **changes))
    assert {name: (finished / name).read_bytes() for name in before} == before


def test_resume_with_the_data_root_spelled_otherwise_is_the_same_run(shapes_root, finished, monkeypatch):
    monkeypatch.chdir(shapes_root.parent)
    trainer = train_module.Trainer(run(Path(shapes_root.name), finished, resume=True))
    assert trainer.resume_changes == {}


def test_safe_changes_go_through_and_are_recorded(shapes_root, tmp_path):
    out = tmp_path / "run"
    train(run(shapes_root, out))
    summary = train(run(shapes_root, out, resume=True, epochs=2, sync_every=7, persistent_workers=False))
    assert summary["epochs"] == 2
    rows = metric_rows(out)
    assert [row["epoch"] for row in rows if row["kind"] == "epoch"] == [1, 2]
    (resumed,) = [row for row in rows if row["kind"] == "resume"]
    assert resumed["epoch"] == 1
    assert resumed["changed"] == {
        "epochs": [1, 2],
        "sync_every": [50, 7],
        "persistent_workers": [True, False],
    }


def test_a_failed_save_leaves_no_tmp_and_a_resume_writes_no_duplicate_row(shapes_root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_save, saves = torch.save, []

    def full_disk_on_the_second_last_pt(payload, path):
        saves.append(Path(path).name)
        if saves.count("last.pt.tmp") == 2:  # epoch 2's checkpoint: half written, then the disk is full
            Path(path).write_bytes(b"half")
            raise OSError(28, "No space left on device")
        real_save(payload, path)

    monkeypatch.setattr(checkpoint_module.torch, "save", full_disk_on_the_second_last_pt)
    with pytest.raises(OSError, match="No space"):
        train(run(shapes_root, out, epochs=2))
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    assert not (out / "last.pt.tmp").exists()
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    assert [row["epoch"] for row in metric_rows(out)] == [1, 2]  # epoch 2 trained, its checkpoint lost

    train(run(shapes_root, out, epochs=2, resume=True))
    assert [row["epoch"] for row in metric_rows(out) if row["kind"] == "epoch"] == [1, 2]
    assert load_checkpoint(out / "last.pt")["epoch"] == 2


def test_a_new_run_in_an_old_folder_starts_a_new_metrics_file(shapes_root, finished, tmp_path):
    out = tmp_path / "run"
    train(run(shapes_root, out))
    train(run(shapes_root, out))
    assert [row["epoch"] for row in metric_rows(out)] == [1]


@pytest.mark.parametrize("rank", [0, 1])
def test_each_rank_seeds_its_stream_with_seed_plus_rank(shapes_root, tmp_path, monkeypatch, rank):
    monkeypatch.setattr(train_module, "init_distributed", lambda device: DistEnv(rank=rank, world_size=2))
    monkeypatch.setattr(train_module, "DistributedDataParallel", lambda model, device_ids: model)
    train_module.Trainer(run(shapes_root, tmp_path / "run", seed=3))
    assert torch.initial_seed() == 3 + rank


@pytest.mark.parametrize("epochs", ["0", "-1"])
def test_zero_or_negative_epochs_are_refused(shapes_root, tmp_path, epochs):
    result = runner.invoke(
        app, ["train", "shapes", "--data-root", str(shapes_root), "--distill", "none", "--epochs", epochs,
              "--out", str(tmp_path / "run")],
    )  # fmt: skip
    assert result.exit_code == 2 and f"--epochs must be at least 1, got {epochs}" in result.stderr
    assert not (tmp_path / "run").exists()


def test_workers_are_bounded_by_the_usable_cpus(shapes_root, tmp_path, monkeypatch):
    import os

    import pipeline.teacher.cache_job as cache_job

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    seen = {}
    monkeypatch.setattr(train_module, "train", lambda config: seen.setdefault("train", config))
    monkeypatch.setattr(cache_job, "build_cache", lambda config: seen.setdefault("cache", config))
    trained = runner.invoke(
        app, ["train", "shapes", "--data-root", str(shapes_root), "--distill", "none", "--workers", "999"]
    )
    cached = runner.invoke(
        app, ["cache", "build", "shapes", "--data-root", str(shapes_root), "--decode-workers", "999",
              "--workers", "999", "--device", "cpu"],
    )  # fmt: skip
    assert trained.exit_code == cached.exit_code == 0, trained.output + cached.output
    assert seen["train"].workers == 2 and "--workers 999 lowered to 2" in trained.stderr
    assert (seen["cache"].decode_workers, seen["cache"].workers) == (2, 2)


def test_a_checkpoint_from_before_an_option_existed_counts_it_at_its_default():
    from pipeline.engine.resume import _defaults, changed_options

    now = _defaults()
    older = {key: value for key, value in now.items() if key != "train_fraction"}
    older["loss"] = {key: value for key, value in now["loss"].items() if key != "box_beta"}
    assert changed_options(older, now) == {}
    assert changed_options(older, {**now, "train_fraction": 0.5}) == {"train_fraction": (1.0, 0.5)}
