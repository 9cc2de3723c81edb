"""Checks of the CLI's options that must fail before any work starts, each with the option's name.

A wrong `--out`, `--device` or `--workers` would otherwise surface minutes later (after data loading,
a teacher build or a whole epoch) or never (999 loader processes on 16 CPUs just thrash).
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

AUTO_DEVICE = "auto"


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), not the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


LOADER_WORKERS_CAP = 8  # past this a rank's decode and augmentation rarely gain, and each costs memory


def default_loader_workers(
    usable: int | None = None, local_world_size: int | None = None, cap: int = LOADER_WORKERS_CAP
) -> int:
    """A rank's data-loading processes by default: the node's usable CPUs shared among the ranks on it
    (torchrun's `LOCAL_WORLD_SIZE`), at least 1, at most `cap`. An explicit --workers wins."""
    usable = usable_cpus() if usable is None else usable
    if local_world_size is None:
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(cap, usable // max(1, local_world_size)))


def bounded_workers(requested: int, option: str) -> int:
    """`requested` processes, at most one per usable CPU (more only thrash); says so when it lowers it."""
    if requested < 0:
        raise ValueError(f"{option} must be 0 or more, got {requested}")
    usable = usable_cpus()
    if requested > usable:
        typer.secho(f"note: {option} {requested} lowered to {usable}, the usable CPUs", fg="yellow", err=True)
        return usable
    return requested


def resolve_device(device: str, option: str = "--device") -> str:
    """`auto` → `cuda` when a GPU is visible, else `cpu`; a CUDA device without a GPU is refused."""
    import torch  # deferred: `epmvg --help` should not pay for it

    if device == AUTO_DEVICE:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"{option} {device}: no CUDA GPU is visible to this process; use --device cpu or auto"
        )
    return device


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_writable(path: Path, option: str) -> None:
    existing = _nearest_existing(path)
    # os.access is True for root everywhere, so this guards ordinary users; root meets the OSError later.
    if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path}: {existing} is not writable")


def check_out_dir(path: Path, option: str = "--out") -> Path:
    """A folder the command may create or fill: not an existing file, under a writable folder."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path}: exists and is not a folder")
    if _nearest_existing(path).is_file():
        raise ValueError(f"{option} {path}: {_nearest_existing(path)} is a file, not a folder")
    _check_writable(path, option)
    return path


def check_out_file(path: Path, option: str = "--out") -> Path:
    """A file the command writes: not an existing folder, in an existing, writable folder."""
    if path.is_dir():
        raise ValueError(f"{option} {path}: is a folder; name the file to write")
    if not path.absolute().parent.is_dir():
        raise ValueError(f"{option} {path}: folder {path.absolute().parent} does not exist")
    _check_writable(path.absolute().parent, option)
    return path
