"""What a Phase-1 store means to the trainer: its schema (`schema.py`), its tables in RAM
(`store.py`), view replay (`replay.py`), and the target sources a run draws its teacher targets from
(`sources.py`; the online teacher in `online.py`, imported only by an online run)."""

from pipeline.targets.store import (
    BadTargetsError,
    TargetsMismatchError,
    TeacherTargets,
    check_rows,
    load_targets,
    open_store,
)

__all__ = [
    "BadTargetsError",
    "TargetsMismatchError",
    "TeacherTargets",
    "check_rows",
    "load_targets",
    "open_store",
]
