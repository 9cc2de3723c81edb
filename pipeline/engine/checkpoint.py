"""Checkpoints that hold everything a resumed run needs, loadable without trusting pickled code.

Only tensors and plain containers go in, so `torch.load(weights_only=True)` can read them back: a
checkpoint downloaded from somewhere cannot execute anything on load.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

LAST, BEST = "last.pt", "best.pt"
# What torch.load raises for empty (EOF), truncated (zip reader), refused or hostile files.
_UNREADABLE = (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, MemoryError, ValueError)
RUN_KEYS = ("model", "student_config", "train_config")  # what eval, predict and diagnose read


class CheckpointError(ValueError):
    """A file that is not a readable checkpoint of this project (empty, truncated, another kind)."""


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """The CPU generator's state, and on CUDA the state of `device` (this process's GPU) only:
    `get_rng_state_all` would open a context on every visible GPU, and a run resumed on fewer GPUs
    could not put them all back."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore what fits this process: the CPU state, and `device`'s CUDA state when one was saved.
    Older checkpoints hold a list (every GPU visible when saved); only `device`'s entry is used, and
    none when that GPU index was not there (a resume on more GPUs than saved)."""
    torch.set_rng_state(state["torch"])
    saved = state.get("cuda")
    if device is None or device.type != "cuda" or saved is None:
        return
    if isinstance(saved, (list, tuple)):
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= len(saved):
            return
        saved = saved[index]
    torch.cuda.set_rng_state(saved, device)


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        # A full disk or a kill mid-write: leave no half-written `.tmp` beside the good checkpoint.
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, required: Iterable[str] = RUN_KEYS) -> dict[str, Any]:
    """The checkpoint's payload; `CheckpointError` when it cannot be read or lacks a `required` key."""
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except _UNREADABLE as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({type(exc).__name__}: {first_line})"
        ) from exc
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: not a checkpoint of this project (holds a {type(payload).__name__})")
    missing = [key for key in required if key not in payload]
    if missing:
        raise CheckpointError(f"{path}: not a checkpoint of this project (no {', '.join(missing)})")
    return payload
