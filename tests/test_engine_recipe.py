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


def test_the_cuda_recipe_is_a_no_op_on_cpu_and_fused_adamw_is_asked_only_on_cuda(monkeypatch) -> None:
    from types import SimpleNamespace

    from pipeline.engine.config import TrainConfig
    from pipeline.engine.setup import cuda_recipe, fused_adamw_options, student_config_for

    config = TrainConfig(dataset="shapes", distill="none", student="tiny")
    before = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.fp32_precision)
    cuda_recipe(torch.device("cpu"), config)
    assert (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.fp32_precision) == before

    on_gpu = [SimpleNamespace(device=torch.device("cuda", 0))] * 3
    assert fused_adamw_options(on_gpu, enabled=True) == {"fused": True}
    assert fused_adamw_options(on_gpu, enabled=False) == {}
    assert fused_adamw_options([*on_gpu, torch.zeros(1)], enabled=True) == {}  # one on the CPU
    assert fused_adamw_options([torch.zeros(1)], enabled=True) == {}

    # channels-last student on CUDA by default; off on CPU, or when turned off, or set on the student
    assert not student_config_for(config).channels_last
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cuda = TrainConfig(dataset="shapes", distill="none", student="tiny", device="cuda")
    assert student_config_for(cuda).channels_last
    assert not student_config_for(TrainConfig(**{**cuda.__dict__, "channels_last": False})).channels_last
    kept = TrainConfig(**{**cuda.__dict__, "student_overrides": {"channels_last": False}})
    assert not student_config_for(kept).channels_last


def test_build_optimizer_on_cpu_does_not_ask_for_the_fused_kernel() -> None:
    from pipeline.engine.config import TrainConfig
    from pipeline.engine.setup import build_optimizer, student_config_for
    from pipeline.student import build_student

    config = TrainConfig(
        dataset="shapes", distill="none", student="tiny", student_overrides={"image_size": 64}
    )
    optimizer = build_optimizer(build_student(student_config_for(config)), [], config)
    assert not optimizer.defaults.get("fused")
