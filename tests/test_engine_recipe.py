"""The trainer's GPU recipe, tested on CPU: CUDA calls are faked where the logic depends on them."""

from __future__ import annotations

import torch

from pipeline.engine import checkpoint
from pipeline.engine.checkpoint import set_rng_state


def _fake_cuda(monkeypatch, visible: int) -> list[int]:
    """`visible` fake GPUs; returns the device indices whose RNG state was set. Setting the state of a
    GPU that is not there raises IndexError, as torch does."""
    restored: list[int] = []

    def fake_set(state, device="cuda"):
        index = device if isinstance(device, int) else torch.device(device).index or 0
        if index >= visible:
            raise IndexError(f"no GPU {index} of {visible}")
        restored.append(index)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_rng_state", fake_set)
    monkeypatch.setattr(torch.cuda.random, "set_rng_state", fake_set)  # what set_rng_state_all calls
    return restored


def test_resume_with_fewer_gpus_restores_the_process_device_only(monkeypatch) -> None:
    saved = {"torch": torch.get_rng_state(), "cuda": [torch.zeros(8, dtype=torch.uint8)] * 8}  # 8 GPUs
    for visible in (4, 1):
        restored = _fake_cuda(monkeypatch, visible)
        set_rng_state(saved, torch.device("cuda:0"))
        assert restored == [0]
    restored = _fake_cuda(monkeypatch, 4)
    set_rng_state(saved, torch.device("cuda:3"))
    assert restored == [3]
    # A resume on more GPUs than were saved: this GPU's stream was never saved, nothing to restore.
    restored = _fake_cuda(monkeypatch, 16)
    set_rng_state(
        {"torch": torch.get_rng_state(), "cuda": [torch.zeros(8, dtype=torch.uint8)] * 8},
        torch.device("cuda:12"),
    )
    assert restored == []
    # The new format: one state, this process's device.
    restored = _fake_cuda(monkeypatch, 2)
    set_rng_state(
        {"torch": torch.get_rng_state(), "cuda": torch.zeros(8, dtype=torch.uint8)}, torch.device("cuda:1")
    )
    assert restored == [1]


def test_rng_state_saves_only_this_process_device(monkeypatch) -> None:
    asked: list = []
    monkeypatch.setattr(
        torch.cuda, "get_rng_state", lambda device="cuda": asked.append(device) or torch.zeros(1)
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.zeros(1)] * 8)
    state = checkpoint.rng_state(torch.device("cuda:2"))
    assert asked == [torch.device("cuda:2")] and state["cuda"].shape == (1,)
    assert "cuda" not in checkpoint.rng_state(torch.device("cpu"))
