"""`--device auto` is every command's default: CUDA when a GPU is visible, else the CPU."""

import inspect
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import pipeline.cache_job as cache_job
import pipeline.cli as cli
import pipeline.engine.train as train_module
from pipeline.cli_options import resolve_device

runner = CliRunner()


@pytest.mark.parametrize("command", [cli.cache_build, cli.train, cli.evaluate, cli.predict, cli.ablations])
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
