"""The trainer's GPU recipe, tested on CPU: CUDA calls are faked where the logic depends on them."""

from __future__ import annotations

import pytest
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


def test_the_global_batch_is_split_across_ranks_and_an_uneven_one_refused() -> None:
    from pipeline.engine.setup import per_rank_batch

    assert per_rank_batch(64, 1) == 64 and per_rank_batch(64, 8) == 8 and per_rank_batch(4, 2) == 2
    with pytest.raises(ValueError, match="--batch-size 3 is the global batch and does not divide by the 2"):
        per_rank_batch(3, 2)


def test_device_cuda_n_is_honoured_outside_torchrun() -> None:
    from pipeline.engine.distributed import DistEnv
    from pipeline.engine.setup import train_device

    alone, rank3 = DistEnv(), DistEnv(rank=3, world_size=4, local_rank=3)
    assert train_device("cuda:1", alone) == torch.device("cuda", 1)
    assert train_device("cuda", alone) == torch.device("cuda", 0)
    assert train_device("cpu", alone) == torch.device("cpu")
    # under torchrun each process takes its local rank's GPU, whatever index --device names
    assert train_device("cuda", rank3) == torch.device("cuda", 3)
    assert train_device("cuda:0", rank3) == torch.device("cuda", 3)
    assert train_device("cpu", rank3) == torch.device("cpu")


def test_lgrnet_align_batch_builds_no_tensor_from_the_host(monkeypatch) -> None:
    """A `torch.tensor(..., device=cuda)` in the step is a host->device copy every step."""
    from types import SimpleNamespace

    from pipeline.criterion import align_batch

    def refuse(*args, **kwargs):
        raise AssertionError("torch.tensor called in the step")

    output = SimpleNamespace(f_obj=torch.zeros(5, 8, dtype=torch.bfloat16))
    monkeypatch.setattr(torch, "tensor", refuse)
    count = align_batch(output)
    assert count.dtype == torch.float32 and count.shape == () and count.item() == 5


def test_frozen_batch_norm_keeps_bf16_activations_bf16() -> None:
    from torchvision.ops.misc import FrozenBatchNorm2d

    from pipeline.student.backbone import build_backbone
    from pipeline.student.config import StudentConfig

    config = StudentConfig(backbone="resnet18", backbone_weights="none", freeze_bn=True)
    body = build_backbone(config, pretrained=False).body
    norms = [m for m in body.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert norms
    norm = norms[0]
    generator = torch.Generator().manual_seed(0)
    for name in ("weight", "bias", "running_mean"):
        getattr(norm, name).copy_(torch.randn(norm.weight.shape, generator=generator))
    norm.running_var.copy_(torch.rand(norm.weight.shape, generator=generator) + 0.5)
    x = torch.randn(2, norm.weight.shape[0], 5, 7, generator=generator)
    expected = norm(x)
    out = norm(x.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)
    assert norm(x).dtype == torch.float32
