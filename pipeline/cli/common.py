"""What the command groups share: the common options, logging, and how `train`/`ablations` find
their store without --cache."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import typer

from pipeline.cli.options import AUTO_DEVICE, usable_cpus


def default_workers(cap: int = 4) -> int:
    """Up to `cap` loader processes, but no more than the CPUs this process may use (torch warns past it)."""
    return min(cap, usable_cpus())


DEVICE = typer.Option(AUTO_DEVICE, help="auto (CUDA when a GPU is visible, else CPU), cpu, cuda or cuda:N")
DATA_ROOT = typer.Option(Path("../shared/data"), "--data-root", help="folder with splits/ and images/")
CACHE_ROOT = typer.Option(
    Path("cache"), "--cache-root", help="without --cache: look for the store in CACHE_ROOT/<dataset>"
)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def found_store(dataset: str, data_root: Path, cache_root: Path) -> Path:
    """The store `train`/`ablations` use without --cache (`pipeline/targets/lookup.py`); says which."""
    from pipeline.targets.lookup import find_store

    store = find_store(dataset, data_root, cache_root)
    if os.environ.get("RANK", "0") == "0":  # torchrun: one line, not one per rank
        typer.echo(f"cache: {store} (the one store under {cache_root / dataset} built for these data)")
    return store


def warn_if_random(extra: dict) -> None:
    if extra.get("random_teacher"):
        typer.secho(
            "warning: this store was made by a RANDOM-weight teacher (--pretrained none)",
            fg="yellow",
            err=True,
        )
