"""Building students, open_clip/timm-style: from a config (`build_student`), from a preset name
(`create_student`), and loading a checkpoint's weights into one (`load_student_weights`). Sits above
the registry, the configs and the models, so none of them imports another in a circle."""

from __future__ import annotations

from typing import Any

from pipeline.student.config import StudentConfig, student_preset
from pipeline.student.model import StudentBase
from pipeline.student.registry import checkpoint_architecture, student_architecture


def build_student(config: StudentConfig, pretrained: bool = True) -> StudentBase:
    """The student `config.architecture` names; pretrained=False skips weight loading (checkpoint restore)."""
    return student_architecture(config.architecture).build(config, pretrained)


def create_student(preset: str, pretrained: bool = True, **overrides: Any) -> StudentBase:
    """build_student(student_preset(preset, **overrides)), timm-style."""
    return build_student(student_preset(preset, **overrides), pretrained)


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
