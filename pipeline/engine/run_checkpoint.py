"""What a run's checkpoint holds and how a resumed run gets it back: the student, the optimizer and
its schedule, the target source's state (a trainable teacher), every rank's RNG and the run's place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.engine.checkpoint import LAST, load_checkpoint, rng_state, set_rng_state
from pipeline.engine.config import TrainConfig
from pipeline.engine.distributed import DistEnv
from pipeline.engine.resume import check_resume
from pipeline.student import StudentBase, StudentConfig, load_student_weights
from pipeline.targets.source import TargetSource


@dataclass
class RunState:
    epoch: int = 0  # epochs completed
    step: int = 0
    best_acc: float = -1.0
    best_epoch: int = 0


@dataclass
class RunParts:
    """Everything of a run that a checkpoint saves and a resume restores."""

    config: TrainConfig
    student_config: StudentConfig
    model: StudentBase
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    source: TargetSource


def resume_point(config: TrainConfig) -> tuple[dict[str, Any] | None, dict[str, list[Any]]]:
    """With `resume`: the checkpoint and the safe option changes; refuses a missing or other run."""
    if not config.resume:
        return None, {}
    last = Path(config.out) / LAST
    if not last.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {last} (drop --resume to start a new run)")
    payload = load_checkpoint(last, required=("model", "optimizer", "train_config", "epoch", "rng"))
    return payload, check_resume(last, payload["train_config"], config.to_dict())


def checkpoint_payload(
    parts: RunParts, state: RunState, rng_states: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Everything a resumed run needs; `rng_states`: every rank's RNG (default: this process's CPU RNG)."""
    rng_states = rng_states or [rng_state()]
    payload = {
        "model": parts.model.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict(),
        "scaler": parts.scaler.state_dict(),
        "rng": rng_states[0],
        "rng_ranks": rng_states,
        "epoch": state.epoch,
        "step": state.step,
        "best_acc": state.best_acc,
        "best_epoch": state.best_epoch,
        "train_config": parts.config.to_dict(),
        "student_config": parts.student_config.to_dict(),
    }
    source_state = parts.source.state_dict()
    if source_state is not None:
        payload["teacher"] = source_state
    return payload


def restore(
    parts: RunParts, payload: dict[str, Any], env: DistEnv, device: torch.device | None = None
) -> RunState:
    """Load a checkpoint into the run's parts and RNG (`device`: this process's GPU, whose CUDA RNG is
    restored); returns where the run stood."""
    load_student_weights(parts.model, payload)
    if "teacher" in payload:
        parts.source.load_state_dict(payload["teacher"])
    parts.optimizer.load_state_dict(payload["optimizer"])
    parts.scheduler.load_state_dict(payload["scheduler"])
    parts.scaler.load_state_dict(payload["scaler"])
    ranks = payload.get("rng_ranks", [])
    # Each rank continues its own stream when the world size is the same; else rank 0's for all.
    set_rng_state(ranks[env.rank] if len(ranks) == env.world_size else payload["rng"], device)
    return RunState(
        payload["epoch"], payload["step"], payload["best_acc"], payload.get("best_epoch", payload["epoch"])
    )
