"""torchrun-aware process-group helpers; everything also works in a single plain process."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str) -> DistEnv:
    """Join the process group torchrun describes in the environment; a no-op without torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistEnv()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank)


def shutdown_distributed(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()


class EvalShardSampler(Sampler[int]):
    """Rank r takes items r, r+W, r+2W, ...: every item exactly once, no padded duplicates."""

    def __init__(self, size: int, env: DistEnv):
        self.indices = list(range(env.rank, size, env.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class EpochSampler(Sampler[int]):
    """This rank's shuffled share of an epoch, as dataset positions epoch·size + i.

    The order is DistributedSampler's (seeded by seed + epoch; one rank is the plain shuffle); the
    offset tells `GroundingDataset` the epoch, so DataLoader workers can persist across epochs.
    Call `set_epoch` before each epoch, as with DistributedSampler.
    """

    def __init__(self, size: int, env: DistEnv, seed: int) -> None:
        self.size = size
        self.epoch = 0
        self.order = DistributedSampler(range(size), num_replicas=env.world_size, rank=env.rank, seed=seed)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.order.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        offset = self.epoch * self.size
        return (offset + index for index in self.order)

    def __len__(self) -> int:
        return len(self.order)


def gather_objects(items: list, env: DistEnv) -> list:
    """Concatenate every rank's list on every rank (exact: nothing padded)."""
    if not env.enabled:
        return items
    gathered: list[list] = [[] for _ in range(env.world_size)]
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


def all_reduce_mean(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.enabled:
        value = value.clone()
        dist.all_reduce(value)
        value /= env.world_size
    return value
