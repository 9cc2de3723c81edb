"""A run's set-up, before its loop: the student's config, the records of each split, the loaders'
shared settings, the optimizer and its schedule. Evaluation and diagnosis read splits the same way."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader

from pipeline.data import (
    GroundingDataset,
    available_splits,
    image_subset,
    load_split,
    max_query_len,
    select_samples,
    validate_samples,
)
from pipeline.data.sample import Sample
from pipeline.engine.config import TrainConfig
from pipeline.engine.distributed import DistEnv, EpochSampler
from pipeline.student import StudentBase, StudentConfig, param_groups, student_preset


def student_config_for(config: TrainConfig) -> StudentConfig:
    # A JSON-lines file is not in the registry: `max_query_len` knows both kinds of dataset.
    overrides = {"max_query_len": max_query_len(config.dataset), **config.student_overrides}
    if config.channels_last and config.device.startswith("cuda"):
        # cuDNN's fast convolution kernels (and bf16 tensor cores) want NHWC; the student's own
        # `channels_last` (from --student-set) wins. The weights are the same either way.
        overrides.setdefault("channels_last", True)
    return student_preset(config.student, **overrides)


def cuda_recipe(device: torch.device, config: TrainConfig) -> None:
    """The process-wide CUDA settings of a run: cuDNN's autotuner (the input size is fixed) and TF32
    for fp32 matmuls and convolutions (what autocast leaves in fp32). A no-op on CPU."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = config.cudnn_benchmark
    precision = "tf32" if config.tf32 else "ieee"
    torch.backends.cuda.matmul.fp32_precision = precision
    torch.backends.cudnn.conv.fp32_precision = precision


def fused_adamw_options(params: list, enabled: bool) -> dict[str, bool]:
    """`{"fused": True}` when asked and every parameter is on CUDA (one kernel for all parameters,
    not several per tensor); else nothing: AdamW's default, which CPU runs need."""
    if enabled and params and all(param.device.type == "cuda" for param in params):
        return {"fused": True}
    return {}


def prepare_split(config: TrainConfig, split: str) -> list[Sample]:
    """Read a split, refuse or drop bad records, and cap its size for quick runs."""
    samples = load_split(config.dataset, split, config.data_root)
    report = validate_samples(samples, check_images=True)
    kept = select_samples(samples, report, skip_missing=config.skip_missing)
    if split == config.train_split:
        kept = image_subset(kept, config.train_fraction)
    kept = kept[: config.max_samples] if config.max_samples else kept
    if config.blank_text:  # the image-only control: the same records, every expression empty
        kept = [dataclasses.replace(sample, text="") for sample in kept]
    return kept


def eval_splits(config: TrainConfig) -> list[str]:
    """The splits a run evaluates: `eval_splits`, or every split but the train split; val first."""
    splits = config.eval_splits or tuple(
        s for s in available_splits(config.dataset, config.data_root) if s != config.train_split
    )
    if config.val_split not in splits:
        splits = (config.val_split, *splits)
    return list(dict.fromkeys(splits))


def autocast_factory(device: torch.device, enabled: bool) -> Callable[[], contextlib.AbstractContextManager]:
    if device.type == "cuda" and enabled:
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def per_rank_batch(global_batch: int, world_size: int) -> int:
    """`--batch-size` is the global batch (the paper's, whatever the GPU count): each rank takes an equal
    share. One that does not divide is refused, before any work: ranks with unequal batches would
    weigh their gradients unequally under DDP's mean."""
    if global_batch % world_size:
        raise ValueError(
            f"--batch-size {global_batch} is the global batch and does not divide by the {world_size} "
            f"ranks; use a multiple of {world_size}"
        )
    return global_batch // world_size


def train_device(requested: str, env: DistEnv) -> torch.device:
    """The device this process trains on: under torchrun, the GPU of its local rank (`cuda` or any
    `cuda:N`: one process per GPU); alone, the one `--device` names (`cuda` = GPU 0)."""
    device = torch.device(requested)
    if device.type != "cuda":
        return device
    if env.enabled:
        return torch.device("cuda", env.local_rank)
    return torch.device("cuda", device.index or 0)


def lr_factor(step: int, steps_per_epoch: int, config: TrainConfig) -> float:
    """Linear warm-up over `warmup_epochs`, then the paper's x0.1 step at `lr_drop`."""
    warmup_steps = int(config.warmup_epochs * steps_per_epoch)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return 0.1 if step >= config.lr_drop * steps_per_epoch else 1.0


def build_optimizer(
    model: StudentBase, extra: list[torch.nn.Parameter], config: TrainConfig
) -> torch.optim.Optimizer:
    """AdamW over the student's declared groups (pretrained branches at `lr_pretrained`), plus `extra`
    parameters a target source trains (a trainable teacher, at the pretrained lr)."""
    groups = param_groups(
        model, lr=config.lr, lr_pretrained=config.lr_pretrained, weight_decay=config.weight_decay
    )
    if extra:
        groups.append({"params": extra, "lr": config.lr_pretrained})
    params = [param for group in groups for param in group["params"]]
    options = fused_adamw_options(params, config.fused_optimizer)
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay, **options)


def train_loader(dataset: GroundingDataset, config: TrainConfig, env: DistEnv, collate) -> DataLoader:
    """The run's one training loader; its workers persist across epochs (the sampler carries the epoch)."""
    return DataLoader(
        dataset,
        batch_size=per_rank_batch(config.batch_size, env.world_size),
        sampler=EpochSampler(len(dataset), env, config.seed),
        num_workers=config.workers,
        collate_fn=collate,
        drop_last=len(dataset) > config.batch_size,  # a smaller set still trains: one short batch
        pin_memory=config.device.startswith("cuda"),
        persistent_workers=config.workers > 0 and config.persistent_workers,
        # Its own generator: a loader draws its workers' seed when it starts them, once a run when they
        # persist, and from the global RNG that would shift dropout between a resumed run and a straight one.
        generator=torch.Generator().manual_seed(config.seed),
    )
