"""The students this kit can train, by `StudentConfig.architecture`: the one list of architectures.

One entry per architecture is the whole interface a new student needs: its model class (a
`StudentBase`), the loss terms it trains with (`pipeline/criterion.py`), its diagnostics, what its
training records must carry, and its ablation grid. The model and the grid are named as
"module:attribute" and imported on first use. The trainer, evaluation, checkpoints, `epmvg diagnose`
and the ablation grids look the architecture up here instead of branching on it; `StudentConfig`
checks its `architecture` against this list while parsing, which it can import because nothing here
imports a model, nor any other student module, at import time (`tests/test_import_graph.py`).
Building a student from its config is `factory.py`.
"""

from __future__ import annotations

import importlib
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
    model: str | type  # a StudentBase subclass
    loss_terms: Mapping[str, LossTerm]
    ablations: str | AblationGrid
    diagnostics: Mapping[str, Diagnostic] = field(default_factory=dict)
    # What its training records must carry (`pipeline/data/supervision.py`): a box on every record.
    supervision: Supervision = Supervision.FULL

    @property
    def model_class(self) -> type:
        return resolve(self.model)

    @property
    def ablation_grid(self) -> AblationGrid:
        return resolve(self.ablations)

    def build(self, config: Any, pretrained: bool = True) -> Any:
        """The model for a `StudentConfig` (`pipeline/student/factory.py` is the public way in)."""
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


def checkpoint_architecture(student_config: dict[str, Any]) -> str:
    """The architecture a checkpoint's student_config records (checkpoints from before LGR-NET: transvg)."""
    return student_config.get("architecture", "transvg")
