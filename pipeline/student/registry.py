"""The students this kit can train, by `StudentConfig.architecture`: how to build one and its loss.

One entry per architecture is the whole interface a new student needs: the trainer, evaluation,
checkpoints and the ablation grid look the architecture up here instead of branching on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from pipeline.losses import grounding_loss, lgrnet_loss
from pipeline.student.config import StudentConfig, student_preset
from pipeline.student.lgrnet import LGRNet
from pipeline.student.model import StudentBase, TransVG

# (output, target_box, teacher_image, teacher_text, loss_config, teacher_grad) → named loss terms + "total"
Objective = Callable[..., dict[str, Tensor]]


@dataclass(frozen=True)
class StudentArchitecture:
    name: str
    build: Callable[[StudentConfig, bool], StudentBase]  # (config, pretrained) → model
    objective: Objective  # the training loss, with EpmVG's distillation terms when teachers are given


# Keys match config.ARCHITECTURES (a test checks it): a bad name then fails while parsing the config.
STUDENTS: dict[str, StudentArchitecture] = {
    "transvg": StudentArchitecture("transvg", TransVG, grounding_loss),
    "lgrnet": StudentArchitecture("lgrnet", LGRNet, lgrnet_loss),
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
