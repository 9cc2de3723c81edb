"""Full integrity check of a store, and a JSON-able summary of one."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ._zarrio import ShardMarker, array_sha256, emb_array, open_group, read_index, read_keys
from .errors import StoreError
from .manifest import IndexInfo, Manifest, TableSpec


@dataclass
class VerifyReport:
    """Outcome of `verify_store`: `ok` when `problems` is empty."""

    problems: list[str] = field(default_factory=list)
    shards_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_store(path: str | Path) -> VerifyReport:
    """Re-read every shard: checksums vs manifest, no NaN/inf or unwritten rows, keys and index
    arrays consistent with the tables, and the complete flag set. Reads the store once.

    Raises NotAStoreError when `path` is not a store at all; everything else is a problem.
    """
    root = Path(path)
    group = open_group(root)
    raw = group.attrs.asdict()
    manifest = Manifest.from_attrs(raw, where=str(root))
    report = VerifyReport()
    if "tables" not in raw:
        report.problems.append("store creation was interrupted (no tables recorded); rerun the cache job")
    if not manifest.complete:
        report.problems.append(
            "store is incomplete (complete flag not set); rerun the cache job to resume it"
        )
    for table, spec in manifest.tables.items():
        _verify_table(root, group, manifest, table, spec, report)
    _verify_indices(group, manifest, report)
    return report


def _expected_checksums(root: Path, manifest: Manifest, table: str, spec: TableSpec) -> list[str | None]:
    """Per shard: the manifest checksum of a complete store, else the marker's (None if pending)."""
    if manifest.complete:
        recorded = manifest.shard_checksums.get(table, [])
        return [recorded[i] if i < len(recorded) else None for i in range(spec.num_shards)]
    markers = [ShardMarker.read(root, table, i) for i in range(spec.num_shards)]
    return [None if marker is None else marker.sha256 for marker in markers]


def _verify_table(
    root: Path, group: zarr.Group, manifest: Manifest, table: str, spec: TableSpec, report: VerifyReport
) -> None:
    try:
        array = emb_array(group, table)
    except StoreError as exc:
        report.problems.append(f"table {table!r}: {exc}")
        return
    shape = (spec.rows, *spec.row_shape)
    if array.shape != shape or np.dtype(array.dtype) != np.dtype(spec.dtype):
        report.problems.append(
            f"table {table!r}: array is {array.shape} {array.dtype}, manifest says {shape} {spec.dtype}"
        )
        return
    report.problems.extend(_keys_problems(group, table, spec))
    if manifest.complete and len(manifest.shard_checksums.get(table, [])) != spec.num_shards:
        report.problems.append(
            f"table {table!r}: manifest lacks checksums for some of its {spec.num_shards} shards"
        )
    expected = _expected_checksums(root, manifest, table, spec)
    pending = [i for i, checksum in enumerate(expected) if checksum is None]
    if pending:
        report.problems.append(
            f"table {table!r}: {len(pending)} of {spec.num_shards} shards pending (first {pending[:5]})"
        )
    for shard, checksum in enumerate(expected):
        if checksum is not None:
            report.problems.extend(_verify_shard(array, table, spec, shard, checksum))
            report.shards_checked += 1


def _keys_problems(group: zarr.Group, table: str, spec: TableSpec) -> list[str]:
    try:
        count = len(read_keys(group, table))
    # Decode failures of any kind mean the keys are corrupt or missing.
    except Exception as exc:
        return [f"table {table!r}: keys unreadable ({type(exc).__name__}: {exc})"]
    return [] if count == spec.rows else [f"table {table!r}: {count} keys for {spec.rows} rows"]


def _verify_shard(array: zarr.Array, table: str, spec: TableSpec, shard: int, checksum: str) -> list[str]:
    start, stop = spec.shard_range(shard)
    where = f"table {table!r} shard {shard} (rows {start}:{stop})"
    try:
        values = array[start:stop]
    # Any decode failure (zstd/crc checksum, truncated object, ...) means a corrupt shard.
    except Exception as exc:
        return [f"{where}: unreadable ({type(exc).__name__}: {exc})"]
    problems = []
    finite = np.isfinite(values.reshape(values.shape[0], -1))
    unwritten = int((~finite).all(axis=1).sum())
    non_finite = int((~finite).any(axis=1).sum()) - unwritten
    if unwritten:
        problems.append(f"{where}: {unwritten} rows never written (still the NaN fill value)")
    if non_finite:
        problems.append(f"{where}: {non_finite} rows hold NaN/inf values")
    if array_sha256(values) != checksum:
        problems.append(f"{where}: checksum mismatch (data changed or corrupted since it was written)")
    return problems


def _verify_indices(group: zarr.Group, manifest: Manifest, report: VerifyReport) -> None:
    largest = max((spec.rows for spec in manifest.tables.values()), default=0)
    for name, info in manifest.indices.items():
        try:
            values = read_index(group, name)
        # Decode failures of any kind mean the index is corrupt or missing.
        except Exception as exc:
            report.problems.append(f"index {name!r}: unreadable ({type(exc).__name__}: {exc})")
            continue
        report.problems.extend(_index_problems(name, info, values, manifest, largest))


def _index_problems(
    name: str, info: IndexInfo, values: np.ndarray, manifest: Manifest, largest: int
) -> list[str]:
    if values.shape != (info.length,):
        return [f"index {name!r}: length {values.shape[0]}, manifest says {info.length}"]
    if not values.size:
        return []
    # Without a declared table the best available bound is the largest table.
    bound = manifest.tables[info.table].rows if info.table in manifest.tables else largest
    target = f"table {info.table!r}" if info.table else "any table"
    if values.min() < -1 or values.max() >= bound:
        return [
            f"index {name!r}: values in [{values.min()}, {values.max()}] outside [-1, {bound}) of {target}"
        ]
    return []


def store_info(path: str | Path) -> dict[str, Any]:
    """JSON-able summary: fingerprint, tables (rows, shape, dtype, shards done/total), indices,
    completeness, size on disk and the caller's `extra`. "Done" counts completion markers."""
    root = Path(path)
    manifest = Manifest.from_attrs(open_group(root).attrs.asdict(), where=str(root))
    return {
        "path": str(root),
        "format_version": manifest.format_version,
        "fingerprint": manifest.fingerprint,
        "fingerprint_id": manifest.fingerprint_id,
        "complete": manifest.complete,
        "created": manifest.created,
        "completed": manifest.completed,
        "tables": {name: _table_info(root, manifest, name, spec) for name, spec in manifest.tables.items()},
        "indices": {name: info.to_json() for name, info in manifest.indices.items()},
        "size_bytes": sum(p.stat().st_size for p in root.rglob("*") if p.is_file()),
        "extra": manifest.extra,
    }


def _table_info(root: Path, manifest: Manifest, table: str, spec: TableSpec) -> dict[str, Any]:
    done = (
        spec.num_shards
        if manifest.complete
        else sum(ShardMarker.read(root, table, i) is not None for i in range(spec.num_shards))
    )
    return {
        "rows": spec.rows,
        "row_shape": list(spec.row_shape),
        "dtype": spec.dtype,
        "shard_rows": spec.shard_rows,
        "shards_done": done,
        "shards_total": spec.num_shards,
    }
