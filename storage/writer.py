"""Creating, resuming and finalizing a store.

Protocol: the process that calls `StoreWriter.open` holds the store's lock, creates (or
resumes) the layout, and at the end calls `finalize`. Shards may be written by it or by any
other process through the module-level `write_shard`: each shard is one object plus its own
completion marker, so concurrent writers of different shards never touch the same file.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import zarr
from zarr.storage import LocalStore

from ._layout import LOCK_FILE, MARKER_DIR, ROOT_METADATA, build_layout, marker_path
from ._lock import StoreLock
from ._zarrio import (
    ShardMarker,
    array_sha256,
    create_arrays,
    emb_array,
    file_sha256,
    has_zarr_group,
    open_group,
    read_index,
    read_keys,
    read_manifest,
    shard_is_complete,
    shard_object_path,
)
from .errors import (
    FingerprintMismatchError,
    LayoutMismatchError,
    NotAStoreError,
    ShardsPendingError,
    ShardValueError,
    StoreCompleteError,
    UnknownNameError,
    WriterClosedError,
)
from .manifest import (
    FORMAT_NAME,
    Layout,
    Manifest,
    TableSpec,
    describe_diffs,
    diff_keys,
    normalize_json,
    utc_now,
)

# Attributes written only once the arrays, keys and indices exist: their absence marks a store
# whose creation was interrupted (nothing of value in it yet).
_LAYOUT_ATTRS = ("tables", "indices")


def write_shard(path: str | Path, table: str, shard: int, values: np.ndarray) -> str:
    """Write one whole shard and its completion marker; returns the shard's sha256.

    Usable from any process (e.g. a dask worker) while the lock holder keeps the store open.
    Values are cast to the table's dtype; NaN/inf (including float16 overflow) are refused.
    """
    root = Path(path)
    group = open_group(root, writable=True)
    manifest = Manifest.from_attrs(group.attrs.asdict(), where=str(root))
    if manifest.complete:
        raise StoreCompleteError(
            f"store {root} is finalized; writing shard {shard} of {table!r} would invalidate its checksums "
            f"(reopen the writer with force=True to rebuild it)"
        )
    spec = _table_spec(manifest, table)
    start, stop = spec.shard_range(shard)
    data = _checked_values(table, shard, spec, values, start, stop)
    array = emb_array(group, table)
    # Drop the old marker first: a marker on disk must always describe the data beside it.
    marker_path(root, table, shard).unlink(missing_ok=True)
    array[start:stop] = data
    object_sha = file_sha256(shard_object_path(root, array, shard), sync=True)
    if object_sha is None:
        raise NotAStoreError(
            f"shard {shard} of table {table!r} in {root} vanished right after it was written"
        )
    checksum = array_sha256(data)
    ShardMarker(table, int(shard), start, stop, checksum, object_sha).write(root)
    return checksum


def _table_spec(manifest: Manifest, table: str) -> TableSpec:
    try:
        return manifest.tables[table]
    except KeyError:
        raise UnknownNameError(f"unknown table {table!r}; the store has {sorted(manifest.tables)}") from None


def _checked_values(
    table: str, shard: int, spec: TableSpec, values: np.ndarray, start: int, stop: int
) -> np.ndarray:
    """The values cast to the table dtype, after shape, dtype and finiteness checks."""
    array = np.asarray(values)
    where = f"shard {shard} of table {table!r} (rows {start}:{stop})"
    expected = (stop - start, *spec.row_shape)
    if array.shape != expected:
        raise ShardValueError(f"{where} needs values of shape {expected}, got {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise ShardValueError(f"{where} needs floating-point values, got dtype {array.dtype}")
    # Overflow to inf is reported below with a clearer message than numpy's warning.
    with np.errstate(over="ignore"):
        data = np.ascontiguousarray(array, dtype=spec.dtype)
    bad_rows = np.flatnonzero(~np.isfinite(data.reshape(data.shape[0], -1)).all(axis=1))
    if bad_rows.size:
        cause = (
            "NaN/inf in the input"
            if not np.isfinite(array).all()
            else f"overflow when casting to {spec.dtype}"
        )
        raise ShardValueError(
            f"{where}: {bad_rows.size} rows hold non-finite values ({cause}), "
            f"first at row {start + bad_rows[0]}; NaN/inf are refused because NaN marks unwritten rows"
        )
    return data


def _check_not_foreign(root: Path) -> None:
    """Refuse, even with force, to write into a file or a non-empty directory that is not a store."""
    if root.exists() and not root.is_dir():
        raise NotAStoreError(f"{root} exists and is not a directory; refusing to turn it into a store")
    if not root.is_dir():
        return
    leftovers = [p.name for p in root.iterdir() if p.name != LOCK_FILE]
    if not leftovers:
        return
    attrs = open_group(root).attrs.asdict() if has_zarr_group(root) else {}
    if attrs.get("format") != FORMAT_NAME:
        raise NotAStoreError(
            f"{root} is a non-empty directory that is not a feature store (holds {sorted(leftovers)[:5]}); "
            f"refusing to write there even with --force: choose another path or delete it yourself"
        )


def _wipe(root: Path) -> None:
    """Empty the store directory, crash-safely.

    The layout attributes go first, so a wipe killed halfway leaves a store that reads as
    "creation interrupted" (rebuilt on next open) rather than a complete store missing files;
    the root metadata goes last, so the directory still reads as ours until it is empty.
    """
    if has_zarr_group(root):
        attrs = open_group(root, writable=True).attrs
        kept = {key: value for key, value in attrs.asdict().items() if key not in _LAYOUT_ATTRS}
        attrs.put({**kept, "complete": False})
    # Keep the lock file: it is the inode we hold the lock on.
    for child in sorted(root.iterdir(), key=lambda p: p.name == ROOT_METADATA):
        if child.name == LOCK_FILE:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _remove_temp_files(root: Path) -> None:
    # Leftovers of a killed writer: zarr's atomic-write temp files and our marker temp files.
    for pattern, base in (("*.partial", root), ("*.tmp", root / MARKER_DIR)):
        for tmp in base.rglob(pattern):
            tmp.unlink(missing_ok=True)


def _create(root: Path, layout: Layout, extra: dict[str, Any], created: str | None) -> Manifest:
    manifest = Manifest(
        fingerprint=layout.fingerprint,
        fingerprint_id=layout.fingerprint_id,
        tables=layout.tables,
        indices=layout.index_info,
        shard_checksums={},
        extra=extra,
        created=created or utc_now(),
    )
    attrs = manifest.to_attrs()
    initial = {key: value for key, value in attrs.items() if key not in _LAYOUT_ATTRS}
    group = zarr.create_group(store=LocalStore(root), zarr_format=3, attributes=initial)
    create_arrays(group, layout)
    group.attrs.update({key: attrs[key] for key in _LAYOUT_ATTRS})
    return manifest


def _check_fingerprint(root: Path, stored: dict[str, Any], layout: Layout) -> None:
    diffs = diff_keys(stored, layout.fingerprint)
    if diffs:
        keys = [key for key, _, _ in diffs]
        raise FingerprintMismatchError(
            f"store {root} was built for a different fingerprint (differing keys: {', '.join(keys)}): "
            f"{describe_diffs(diffs)}. Rerun with --force to wipe and rebuild it, or write to another path.",
            keys,
        )


def _or_absent(value: object) -> str:
    return "absent" if value is None else str(value)


def _layout_differences(root: Path, manifest: Manifest, layout: Layout) -> list[str]:
    """What differs between the stored layout and the requested one (empty when identical)."""
    problems = [
        f"table {name!r}: store {_or_absent(manifest.tables.get(name))} "
        f"vs requested {_or_absent(layout.tables.get(name))}"
        for name in sorted(set(manifest.tables) | set(layout.tables))
        if manifest.tables.get(name) != layout.tables.get(name)
    ]
    problems += [
        f"index {name!r}: store {_or_absent(manifest.indices.get(name))} "
        f"vs requested {_or_absent(layout.index_info.get(name))}"
        for name in sorted(set(manifest.indices) | set(layout.index_info))
        if manifest.indices.get(name) != layout.index_info.get(name)
    ]
    if problems:
        return problems
    group = open_group(root)
    problems += [
        f"keys of table {t!r} differ" for t in layout.tables if read_keys(group, t) != layout.keys[t]
    ]
    problems += [
        f"values of index {name!r} differ"
        for name, values in layout.indices.items()
        if not np.array_equal(read_index(group, name), values)
    ]
    return problems


def _prepare(root: Path, layout: Layout, extra: dict[str, Any], force: bool, created: str | None) -> None:
    """Bring the store at `root` (lock held) to the requested layout, keeping completed shards."""
    if has_zarr_group(root) and force:
        _wipe(root)
    if not has_zarr_group(root):
        _create(root, layout, extra, created)
        return
    raw = open_group(root).attrs.asdict()
    manifest = Manifest.from_attrs(raw, where=str(root))
    _check_fingerprint(root, manifest.fingerprint, layout)
    if not all(key in raw for key in _LAYOUT_ATTRS):
        _wipe(root)
        _create(root, layout, extra, created)
        return
    problems = _layout_differences(root, manifest, layout)
    if problems:
        raise LayoutMismatchError(
            f"store {root} has the same fingerprint but a different layout: {'; '.join(problems)}. "
            f"The fingerprint should cover whatever changed; rerun with --force to rebuild the store."
        )
    _remove_temp_files(root)
    if not manifest.complete and manifest.extra != extra:
        open_group(root, writable=True).attrs.update({"extra": extra})


class StoreWriter:
    """Exclusive handle for building one store; use as a context manager or call `close()`."""

    def __init__(self, root: Path, lock: StoreLock) -> None:
        """Use `StoreWriter.open`; this only wraps an already-prepared store and its held lock."""
        self._root = root
        self._lock = lock
        self._group = open_group(root, writable=True)
        self._manifest = Manifest.from_attrs(self._group.attrs.asdict(), where=str(root))

    @classmethod
    def open(
        cls,
        path: str | Path,
        fingerprint: Mapping[str, Any],
        tables: Mapping[str, TableSpec],
        keys: Mapping[str, Sequence[str]],
        indices: Mapping[str, np.ndarray],
        extra: Mapping[str, Any] | None = None,
        force: bool = False,
        index_tables: Mapping[str, str] | None = None,
    ) -> StoreWriter:
        """Create the store at `path`, or resume it if it holds the same fingerprint and layout.

        `index_tables` optionally names, per index array, the table its values point into
        (checked at open and by `verify_store`). A complete store with the same fingerprint
        opens with no pending shards. `force` wipes an existing store first.
        """
        layout = build_layout(fingerprint, tables, keys, indices, index_tables)
        return cls._open(Path(path), layout, normalize_json(dict(extra or {})), force, created=None)

    @classmethod
    def _open(
        cls, root: Path, layout: Layout, extra: dict[str, Any], force: bool, created: str | None
    ) -> StoreWriter:
        _check_not_foreign(root)
        root.mkdir(parents=True, exist_ok=True)
        lock = StoreLock.acquire(root / LOCK_FILE)
        try:
            _prepare(root, layout, extra, force, created)
            return cls(root, lock)
        except BaseException:
            lock.release()
            raise

    @property
    def path(self) -> Path:
        return self._root

    @property
    def manifest(self) -> Manifest:
        """The manifest as of open or the last finalize."""
        return self._manifest

    @property
    def complete(self) -> bool:
        return self._manifest.complete

    def tables(self) -> list[str]:
        return list(self._manifest.tables)

    def table_spec(self, table: str) -> TableSpec:
        return _table_spec(self._manifest, table)

    def num_shards(self, table: str) -> int:
        return self.table_spec(table).num_shards

    def shard_range(self, table: str, shard: int) -> tuple[int, int]:
        """Row range [start, stop) of a shard."""
        return self.table_spec(table).shard_range(shard)

    def pending_shards(self, table: str) -> list[int]:
        """Shards without a valid completion marker (hashes every written shard object once)."""
        self._require_open()
        spec = self.table_spec(table)
        if self._manifest.complete:
            return []
        array = emb_array(self._group, table)
        return [i for i in range(spec.num_shards) if not shard_is_complete(self._root, array, table, i)]

    def write_shard(self, table: str, shard: int, values: np.ndarray) -> str:
        """Write one shard from this process; see the module-level `write_shard`."""
        self._require_open()
        return write_shard(self._root, table, shard, values)

    def set_extra(self, extra: Mapping[str, Any]) -> None:
        """Replace the caller's free-form `extra` dict (e.g. warnings found while writing)."""
        self._require_open()
        if self._manifest.complete:
            raise StoreCompleteError(f"store {self._root} is finalized; its manifest can no longer change")
        self._group.attrs.update({"extra": normalize_json(dict(extra))})
        self._manifest = read_manifest(self._root)

    def finalize(self) -> Manifest:
        """Record all shard checksums in the manifest, then mark the store complete."""
        return self._finalize(completed=None)

    def _finalize(self, completed: str | None) -> Manifest:
        self._require_open()
        if self._manifest.complete:
            return self._manifest
        pending = {table: self.pending_shards(table) for table in self._manifest.tables}
        pending = {table: shards for table, shards in pending.items() if shards}
        if pending:
            summary = ", ".join(
                f"{t}: {len(s)} of {self.num_shards(t)} (first {s[:5]})" for t, s in pending.items()
            )
            raise ShardsPendingError(f"cannot finalize {self._root}: shards still pending: {summary}")
        checksums = {table: self.shard_checksums(table) for table in self._manifest.tables}
        self._group.attrs.update({"shard_checksums": checksums, "completed": completed or utc_now()})
        # Separate, final update: a crash before it leaves the store incomplete, never half-described.
        self._group.attrs.update({"complete": True})
        self._manifest = read_manifest(self._root)
        return self._manifest

    def shard_checksums(self, table: str) -> list[str]:
        """Array-bytes sha256 of every shard, from the completion markers (all must be written)."""
        self._require_open()
        if self._manifest.complete:
            return list(self._manifest.shard_checksums[table])
        markers = [ShardMarker.read(self._root, table, i) for i in range(self.num_shards(table))]
        missing = [i for i, marker in enumerate(markers) if marker is None]
        if missing:
            raise ShardsPendingError(
                f"table {table!r}: shards {missing[:5]} (and maybe more) are not written yet"
            )
        return [marker.sha256 for marker in markers if marker is not None]

    def close(self) -> None:
        """Release the lock; idempotent."""
        self._lock.release()

    def _require_open(self) -> None:
        if not self._lock.held:
            raise WriterClosedError(f"writer of {self._root} is closed")

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
