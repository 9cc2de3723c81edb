"""Which Phase-1 store a run trains on when no `--cache` is given: the one built for these data.

`epmvg cache build DATASET` writes `cache/<dataset>/<fingerprint prefix>` (relative to the current
folder, `pipeline.teacher.cache_job.default_store_path`); `find_store` looks in that same folder for the
complete stores whose dataset fingerprint (name + hash of every split file, as `load_targets` checks
it) equals the data's current one. Exactly one: its path. None, or several: a one-line error listing
what it found and naming `--cache`, so `make cache DATASET=X && make train DATASET=X` composes
without a path copied by hand, and never trains on a guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import storage
from pipeline.data import dataset_fingerprint

DEFAULT_CACHE_ROOT = Path("cache")
_LISTED = 4  # stores named in an error line; the rest are counted


class StoreLookupError(ValueError):
    """No single complete store under the cache root matches the data (reported as one line)."""


class NoMatchingStoreError(StoreLookupError):
    """No complete store was built for these data."""


class AmbiguousStoreError(StoreLookupError):
    """Several complete stores were built for these data: the user picks one with --cache."""


@dataclass(frozen=True)
class StoreCandidate:
    path: Path
    why_not: str | None  # None: complete and built for these data
    teacher: str = "?"  # the teacher's model (and "random" weights), to tell matching stores apart


def dataset_folder(dataset: str, root: Path = DEFAULT_CACHE_ROOT) -> Path:
    """Where `cache build` puts a dataset's stores by default (`default_store_path`'s parent)."""
    return Path(root) / dataset


def _mismatch(stored: Any, expected: dict[str, Any]) -> str | None:
    """Why a store's dataset fingerprint is not the data's, or None when it is."""
    if stored == expected:
        return None
    if not isinstance(stored, dict):
        return "no dataset fingerprint"
    if stored.get("name") != expected["name"]:
        return f"built for dataset {stored.get('name')!r}"
    stored_files, files = stored.get("files") or {}, expected["files"]
    changed = sorted(
        name for name in set(stored_files) | set(files) if stored_files.get(name) != files.get(name)
    )
    shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
    return f"built for other split files: {shown}" if changed else "built for other data"


def _teacher(store: storage.FeatureStore) -> str:
    name = Path(str(store.fingerprint.get("teacher", "?"))).name  # a config JSON path: its file name
    extras = ["random weights"] if store.extra.get("random_teacher") else []
    if "views" in store.fingerprint:
        extras.append("exact views")
    return ", ".join([name, *extras])


def scan_stores(dataset: str, data_root: Path, root: Path = DEFAULT_CACHE_ROOT) -> list[StoreCandidate]:
    """Every store folder directly under `root/<dataset>`, each with why it does not fit (or None)."""
    folder = dataset_folder(dataset, root)
    if not folder.is_dir():
        return []
    expected = dataset_fingerprint(dataset, data_root)
    candidates = []
    for path in sorted(child for child in folder.iterdir() if child.is_dir()):
        try:
            store = storage.FeatureStore.open(path, require_complete=False)
        except storage.StoreError:
            candidates.append(StoreCandidate(path, "not a feature store"))
            continue
        why_not = _mismatch(store.fingerprint.get("dataset"), expected)
        if why_not is None and not store.complete:
            why_not = "incomplete: rerun its `cache build` to finish it"
        candidates.append(StoreCandidate(path, why_not, _teacher(store)))
    return candidates


def _listing(items: list[str]) -> str:
    more = len(items) - _LISTED
    return "; ".join(items[:_LISTED]) + (f"; and {more} more" if more > 0 else "")


def find_store(dataset: str, data_root: Path, root: Path = DEFAULT_CACHE_ROOT) -> Path:
    """The one complete store under `root/<dataset>` built for the data's current split files.

    Raises `NoMatchingStoreError` (listing the stores found and why each does not fit) or
    `AmbiguousStoreError` (listing the matching ones); both name `--cache`.
    """
    folder = dataset_folder(dataset, root)
    candidates = scan_stores(dataset, data_root, root)
    matches = [candidate for candidate in candidates if candidate.why_not is None]
    if len(matches) == 1:
        return matches[0].path
    if matches:
        listed = _listing([f"{match.path} ({match.teacher})" for match in matches])
        raise AmbiguousStoreError(
            f"{len(matches)} complete stores under {folder} match the {dataset} data: {listed}; "
            "pick one with --cache STORE"
        )
    build = (
        f"build one with `epmvg cache build {dataset} --data-root {data_root}` (make cache DATASET={dataset})"
    )
    if not candidates:
        raise NoMatchingStoreError(f"no feature store under {folder}: {build}, or pass --cache STORE")
    listed = _listing([f"{candidate.path} ({candidate.why_not})" for candidate in candidates])
    raise NoMatchingStoreError(
        f"no complete store under {folder} matches the {dataset} data: {listed}; "
        f"{build}, or pass --cache STORE"
    )
