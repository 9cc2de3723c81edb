"""`--device auto` is every command's default: CUDA when a GPU is visible, else the CPU."""

import inspect
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import pipeline.cli as cli
import pipeline.engine.train as train_module
import pipeline.teacher.cache_job as cache_job
from pipeline.cli.cache import cache_build
from pipeline.cli.options import resolve_device
from pipeline.cli.studies import ablations
from pipeline.cli.train import evaluate, predict, train

runner = CliRunner()


@pytest.mark.parametrize("command", [cache_build, train, evaluate, predict, ablations])
def test_device_defaults_to_auto(command):
    assert inspect.signature(command).parameters["device"].default.default == "auto"


@pytest.mark.parametrize("gpu", [False, True])
def test_auto_picks_cuda_only_when_a_gpu_is_visible(monkeypatch, gpu):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    assert resolve_device("auto") == ("cuda" if gpu else "cpu")
    assert resolve_device("cpu") == "cpu"


@pytest.mark.parametrize("gpu", [False, True])
def test_train_and_cache_build_receive_the_resolved_device(tmp_path: Path, monkeypatch, gpu):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    seen = {}
    monkeypatch.setattr(train_module, "train", lambda config: seen.setdefault("train", config))
    monkeypatch.setattr(cache_job, "build_cache", lambda config: seen.setdefault("cache", config))
    trained = runner.invoke(cli.app, ["train", "shapes", "--distill", "none", "--out", str(tmp_path / "r")])
    cached = runner.invoke(cli.app, ["cache", "build", "shapes"])
    assert trained.exit_code == cached.exit_code == 0, trained.output + cached.output
    expected = "cuda" if gpu else "cpu"
    assert seen["train"].device == seen["cache"].teacher.device == expected


def test_train_reads_every_config_field_from_typed_flags_and_set(tmp_path: Path, monkeypatch):
    from pipeline.losses import LossConfig

    seen = []
    monkeypatch.setattr(train_module, "train", seen.append)
    base = ["train", "shapes", "--distill", "none", "--out", str(tmp_path / "r"), "--device", "cpu"]
    assert runner.invoke(cli.app, base).exit_code == 0
    assert seen[-1].loss == LossConfig()  # the flags' defaults are the paper's: no copy drifted
    flags = ["--giou-weight", "2", "--box-loss", "l1", "--distill-loss", "l1", "--warmup-epochs", "0.5"]
    settings = ["--set", "loss.align_weight=0.25", "--set", "train.eval_splits=val,test"]
    settings += ["--set", "student.vl_layers=2", "--student-set", "heads=4"]
    done = runner.invoke(cli.app, base + flags + settings)
    assert done.exit_code == 0, done.output
    config = seen[-1]
    assert (config.loss.giou_weight, config.loss.box, config.loss.distill) == (2.0, "l1", "l1")
    assert config.loss.align_weight == 0.25 and config.warmup_epochs == 0.5 and config.distill == "none"
    assert config.eval_splits == ("val", "test")
    assert config.student_overrides == {"heads": 4, "vl_layers": 2}


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("loss.nope=1", "unknown loss (LossConfig) field 'nope'"),
        ("loss.box=l2", "box='l2': expected 'smooth_l1' or 'l1'"),
        ("train.epochs=ten", "epochs='ten': expected int"),
        ("giou_weight=2", "expected SECTION.FIELD=VALUE"),
        ("train.loss=x", "loss is a section of its own"),
    ],
)
def test_a_bad_set_stops_with_one_line_before_any_work(tmp_path: Path, monkeypatch, setting, message):
    monkeypatch.setattr(train_module, "train", lambda config: pytest.fail("training started"))
    done = runner.invoke(
        cli.app, ["train", "shapes", "--distill", "none", "--out", str(tmp_path / "r"), "--set", setting]
    )
    assert done.exit_code == 2
    lines = done.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --set: ") and message in lines[0], done.output
