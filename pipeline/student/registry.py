"""The students this kit can train, by `StudentConfig.architecture`: how to build one and its loss terms.

One entry per architecture is the whole interface a new student needs: the trainer, evaluation,
checkpoints and the ablation grid look the architecture up here instead of branching on it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.criterion import (
    LGRNET_DIAGNOSTICS,
    LGRNET_TERMS,
    TRANSVG_TERMS,
    Criterion,
    Diagnostic,
    LossTerm,
)
from pipeline.data.supervision import Supervision
from pipeline.losses import LossConfig
from pipeline.student.config import StudentConfig, student_preset
from pipeline.student.lgrnet import LGRNet
from pipeline.student.model import StudentBase, TransVG


@dataclass(frozen=True)
class StudentArchitecture:
    name: str
    build: Callable[[StudentConfig, bool], StudentBase]  # (config, pretrained) → model
    # The loss terms it trains with, name → term (`pipeline/criterion.py`), in summation order; the
    # distillation terms apply when the run has teacher targets.
    loss_terms: Mapping[str, LossTerm]
    diagnostics: Mapping[str, Diagnostic] = field(default_factory=dict)
    # What its training records must carry (`pipeline/data/supervision.py`): a box on every record.
    supervision: Supervision = Supervision.FULL

    def criterion(self, config: LossConfig | None = None) -> Criterion:
        """Its terms, weighted by `config.weight_dict()`."""
        return Criterion(self.loss_terms, config, self.diagnostics)


# Keys match config.ARCHITECTURES (a test checks it): a bad name then fails while parsing the config.
STUDENTS: dict[str, StudentArchitecture] = {
    "transvg": StudentArchitecture("transvg", TransVG, TRANSVG_TERMS),
    "lgrnet": StudentArchitecture("lgrnet", LGRNet, LGRNET_TERMS, LGRNET_DIAGNOSTICS),
}


def student_architecture(name: str) -> StudentArchitecture:
    if name not in STUDENTS:
        raise ValueError(f"unknown student architecture {name!r}; registered: {sorted(STUDENTS)}")
    return STUDENTS[name]


def build_student(config: StudentConfig, pretrained: bool = True) -> StudentBase:
    """The student `config.architecture` names; pretrained=False skips weight loading (checkpoint restore)."""
    return student_architecture(config.architecture).build(config, pretrained)


def create_student(preset: str, pretrained: bool = True, **overrides: Any) -> StudentBase:
    """build_student(student_preset(preset, **overrides)), timm-style."""
    return build_student(student_preset(preset, **overrides), pretrained)


def checkpoint_architecture(student_config: dict[str, Any]) -> str:
    """The architecture a checkpoint's student_config records (checkpoints from before LGR-NET: transvg)."""
    return student_config.get("architecture", "transvg")


def load_student_weights(model: StudentBase, payload: dict[str, Any]) -> None:
    """Load a checkpoint's weights into `model`, refusing one of another architecture by name (rather
    than with a wall of missing and unexpected keys)."""
    saved = checkpoint_architecture(payload["student_config"])
    if saved != model.config.architecture:
        raise ValueError(
            f"the checkpoint holds a {saved} student, but this model is {model.config.architecture}: "
            "use the checkpoint's own student preset (or a fresh run folder)"
        )
    model.load_state_dict(payload["model"])
