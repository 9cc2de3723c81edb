"""The students this kit can train, by `StudentConfig.architecture`: the one list of architectures.

One entry per architecture is the whole interface a new student needs: its model class (a
`StudentBase`), the loss terms it trains with (`pipeline/criterion.py`), its diagnostics, what its
training records must carry, and its ablation grid. The model and the grid are named as
"module:attribute" and imported on first use. The trainer, evaluation, checkpoints, `epmvg diagnose`
and the ablation grids look the architecture up here instead of branching on it; `StudentConfig`
checks its `architecture` against this list while parsing, which it can import because nothing here
imports a model at import time.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from pipeline.student.config import StudentConfig
    from pipeline.student.model import StudentBase

# (baseline TrainConfig, unfrozen_teacher) → variant name → changes to the baseline (engine/ablations.py)
AblationGrid = Callable[..., "dict[str, dict[str, Any]]"]


def resolve(reference: str | Callable[..., Any]) -> Any:
    """ "package.module:attribute" → the attribute (imported now); a callable is returned as it is."""
    if not isinstance(reference, str):
        return reference
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class StudentArchitecture:
    """One student: `model` a StudentBase subclass taking (config, pretrained), `loss_terms` the terms
    it trains with (name → term, in summation order; the distillation terms apply when the run has
    teacher targets), `ablations` its ablation grid; model and grid a "module:attribute" reference or
    the object itself."""

    name: str
    model: str | type[StudentBase]
    loss_terms: Mapping[str, LossTerm]
    ablations: str | AblationGrid
    diagnostics: Mapping[str, Diagnostic] = field(default_factory=dict)
    # What its training records must carry (`pipeline/data/supervision.py`): a box on every record.
    supervision: Supervision = Supervision.FULL

    @property
    def model_class(self) -> type[StudentBase]:
        return resolve(self.model)

    @property
    def ablation_grid(self) -> AblationGrid:
        return resolve(self.ablations)

    def build(self, config: StudentConfig, pretrained: bool = True) -> StudentBase:
        return self.model_class(config, pretrained)

    def criterion(self, config: LossConfig | None = None) -> Criterion:
        """Its terms, weighted by `config.weight_dict()`."""
        return Criterion(self.loss_terms, config, self.diagnostics)


STUDENTS: dict[str, StudentArchitecture] = {
    "transvg": StudentArchitecture(
        "transvg",
        model="pipeline.student.model:TransVG",
        loss_terms=TRANSVG_TERMS,
        ablations="pipeline.studies.ablations:ablation_grid",
    ),
    "lgrnet": StudentArchitecture(
        "lgrnet",
        model="pipeline.student.lgrnet:LGRNet",
        loss_terms=LGRNET_TERMS,
        ablations="pipeline.studies.ablations:lgrnet_ablation_grid",
        diagnostics=LGRNET_DIAGNOSTICS,
    ),
}


def student_architecture(name: str) -> StudentArchitecture:
    if name not in STUDENTS:
        raise ValueError(f"unknown student architecture {name!r}; registered: {sorted(STUDENTS)}")
    return STUDENTS[name]


def build_student(config: StudentConfig, pretrained: bool = True) -> StudentBase:
    """The student `config.architecture` names; pretrained=False skips weight loading (checkpoint restore)."""
    return student_architecture(config.architecture).build(config, pretrained)


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
