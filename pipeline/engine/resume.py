"""What `--resume` may change: a resumed run continues the same run or refuses, before it writes.

The checkpoint's `train_config` is the run's identity. Options that change the model, the data or
the optimisation would silently splice two different runs into one set of weights and one curve;
options that only change how (or how long) the same run is carried out may change, and are recorded.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, fields, is_dataclass
from pathlib import Path
from typing import Any

from pipeline.engine.config import TrainConfig

# How the run is executed, not what it computes: free to change on resume.
SAFE_ON_RESUME = frozenset(
    {"epochs", "workers", "persistent_workers", "device", "amp", "progress", "sync_every", "compile",
     "gallery_size", "eval_splits", "resume", "out", "frozen_cache", "frozen_budget_gb", "channels_last",
     "cudnn_benchmark", "tf32", "fused_optimizer"}
)  # fmt: skip
ARCHITECTURE = frozenset({"student", "student_overrides"})
DATA = frozenset(
    {"dataset", "data_root", "cache", "train_split", "val_split", "max_samples", "skip_missing",
     "blank_text", "augment", "aug_translate", "precompute_frozen", "distill", "train_fraction"}
)  # fmt: skip
_PATHS = ("data_root", "cache", "out")


class ResumeMismatchError(ValueError):
    """`--resume` with options that would make a different run than the checkpoint's."""


def _comparable(key: str, value: Any) -> Any:
    # "../data" and "/abs/data" name the same folder: compare what they point at.
    if key in _PATHS and value is not None:
        return str(Path(value).resolve())
    return value


def _kind(key: str) -> str:
    if key in ARCHITECTURE:
        return "architecture"
    return "data" if key in DATA else "optimisation"


def _defaults() -> dict[str, Any]:
    """TrainConfig's defaults as `to_dict` writes them (paths as strings, tuples as lists)."""
    defaults: dict[str, Any] = {}
    for field in fields(TrainConfig):
        value = field.default if field.default_factory is MISSING else field.default_factory()
        if value is MISSING:
            continue
        if is_dataclass(value):
            value = asdict(value)
        defaults[field.name] = (
            str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple) else value
        )
    return defaults


def changed_options(before: dict[str, Any], after: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Every option whose value differs between two `TrainConfig.to_dict()`s: key -> (before, after).

    An option a checkpoint does not record (it predates the option) counts as the option's default.
    """
    defaults = _defaults()
    before = {**{key: value for key, value in defaults.items() if key not in before}, **before}
    before["loss"] = {**defaults["loss"], **before["loss"]}  # loss fields added since, at their defaults
    keys = sorted(set(before) | set(after))
    return {
        key: (before.get(key), after.get(key))
        for key in keys
        if _comparable(key, before.get(key)) != _comparable(key, after.get(key))
    }


def check_resume(checkpoint: Path, before: dict[str, Any], after: dict[str, Any]) -> dict[str, list[Any]]:
    """The safe changes (to record), or `ResumeMismatchError` naming every refused one in one line."""
    changes = changed_options(before, after)
    refused = {key: change for key, change in changes.items() if key not in SAFE_ON_RESUME}
    if refused:
        reasons = "; ".join(f"{_kind(key)}: {key} {old!r} -> {new!r}" for key, (old, new) in refused.items())
        hint = " (the schedule follows --epochs unless --lr-drop is given)" if "lr_drop" in refused else ""
        raise ResumeMismatchError(
            f"--resume: {checkpoint} belongs to a run with other options ({reasons}){hint}; "
            "resume with the run's options or start a new --out"
        )
    return {key: [old, new] for key, (old, new) in changes.items() if key not in {"resume", "out"}}
