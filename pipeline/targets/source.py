"""The target-source interface: given a batch, a source returns its ([DIE], [DTE]) targets; it
exposes its trainable parameters and its checkpoint state, and says in one line what it is. The
sources themselves and their registry are `sources.py` (and `online.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from pipeline.data import TransformConfig
from pipeline.targets.replay import ViewReplay

if TYPE_CHECKING:  # the engine builds sources; sources only read its config
    from pipeline.engine.config import TrainConfig
    from pipeline.engine.distributed import DistEnv

TeacherBatch = tuple[torch.Tensor | None, torch.Tensor | None]  # ([DIE], [DTE]) as [B, d], or None


@dataclass(frozen=True)
class SourceContext:
    """What a source may need to build itself: the run's config, where it runs, the student's input."""

    config: TrainConfig
    device: torch.device
    env: DistEnv
    transform: TransformConfig  # the student's (un-augmented) transform config


class TargetSource:
    """The interface; this base class is also the `none` source (no targets)."""

    # The dataset replays these stored views instead of drawing augmentations (exact-view stores).
    views: ViewReplay | None = None
    # A trainable teacher's distillation gradient must reach it (`LossTargets.teacher_grad`).
    teacher_grad: bool = False

    def targets(self, batch: dict[str, Any]) -> TeacherBatch:
        return None, None

    def parameters(self) -> list[torch.nn.Parameter]:
        """Parameters the optimizer trains besides the student's (a trainable teacher's)."""
        return []

    def state_dict(self) -> dict[str, Any] | None:
        """What a checkpoint must keep to resume this source (None: nothing; it is rebuilt)."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise ValueError(f"{self.describe()} keeps no checkpoint state, but the checkpoint holds some")

    def describe(self) -> str:
        return "no teacher targets (no distillation)"

    def summary(self) -> dict[str, Any]:
        """The run summary's record of its targets."""
        return {"targets": self.describe(), "teacher_built": False, "teacher_fingerprint": None}

    def table_settings(self) -> dict[str, Any]:
        """What a precomputed frozen table of the train split depends on, besides the student."""
        return {}
