"""Where things live inside a store directory, and validation of what a caller asks to store."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SpecError
from .manifest import IndexInfo, Layout, TableSpec, normalize_json

ROOT_METADATA = "zarr.json"
LOCK_FILE = ".lock"
MARKER_DIR = ".shards"
INDEX_GROUP = "index"
EMB = "emb"
KEYS = "keys"

_INT32 = np.iinfo(np.int32)


def emb_name(table: str) -> str:
    return f"{table}/{EMB}"


def keys_name(table: str) -> str:
    return f"{table}/{KEYS}"


def index_array_name(name: str) -> str:
    return f"{INDEX_GROUP}/{name}"


def marker_dir(root: Path, table: str) -> Path:
    return root / MARKER_DIR / table


def marker_path(root: Path, table: str, shard: int) -> Path:
    return marker_dir(root, table) / f"{shard}.json"


def check_table_name(name: Any) -> str:
    """Table names become one directory level; `index` and dot-names are reserved."""
    if not isinstance(name, str) or not name or "/" in name or name.startswith(".") or name == INDEX_GROUP:
        raise SpecError(
            f"invalid table name {name!r}: use a non-empty string without '/', not starting with '.', "
            f"and not {INDEX_GROUP!r}"
        )
    return name


def check_index_name(name: Any) -> str:
    """Index names may be nested with '/' (e.g. 'val/image_row'); each part must be a plain name."""
    parts = name.split("/") if isinstance(name, str) else [""]
    if not all(part and not part.startswith(".") for part in parts):
        raise SpecError(
            f"invalid index name {name!r}: use '/'-separated non-empty parts that do not start with '.'"
        )
    return name


def _check_keys(table: str, spec: TableSpec, keys: Sequence[str] | None) -> list[str]:
    if keys is None:
        raise SpecError(f"no keys given for table {table!r}: pass keys[{table!r}] with {spec.rows} strings")
    key_list = list(keys)
    if len(key_list) != spec.rows:
        raise SpecError(f"table {table!r} has {spec.rows} rows but {len(key_list)} keys were given")
    bad = next((k for k in key_list if not isinstance(k, str)), None)
    if bad is not None:
        raise SpecError(f"keys of table {table!r} must be str, found {type(bad).__name__} {bad!r}")
    return key_list


def _check_index(name: str, values: Any, bound: int | None, table: str | None) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
        raise SpecError(
            f"index {name!r} must be a 1-D integer array, got shape {array.shape} dtype {array.dtype}"
        )
    if array.size and (array.min() < -1 or array.max() > _INT32.max):
        raise SpecError(
            f"index {name!r} has values outside [-1, {_INT32.max}] (min {array.min()}, max {array.max()})"
        )
    if bound is not None and array.size and array.max() >= bound:
        raise SpecError(
            f"index {name!r} points past the end of table {table!r} ({bound} rows): max {array.max()}"
        )
    return array.astype(np.int32)


def _check_no_nesting_clash(names: list[str]) -> None:
    # 'val' and 'val/image_row' cannot both exist: one would be an array, the other a group.
    for name in names:
        clash = next((other for other in names if other.startswith(name + "/")), None)
        if clash is not None:
            raise SpecError(f"index names {name!r} and {clash!r} clash: an index cannot also be a folder")


def build_layout(
    fingerprint: Mapping[str, Any],
    tables: Mapping[str, TableSpec],
    keys: Mapping[str, Sequence[str]],
    indices: Mapping[str, Any],
    index_tables: Mapping[str, str] | None,
) -> Layout:
    """Validate everything a writer is asked to build, before touching the disk."""
    if not isinstance(fingerprint, Mapping):
        raise SpecError(f"fingerprint must be a dict, got {type(fingerprint).__name__}")
    if not tables:
        raise SpecError("at least one table is required")
    for name, spec in tables.items():
        check_table_name(name)
        if not isinstance(spec, TableSpec):
            raise SpecError(f"tables[{name!r}] must be a TableSpec, got {type(spec).__name__}")
    unknown_keys = sorted(set(keys) - set(tables))
    if unknown_keys:
        raise SpecError(f"keys given for unknown tables {unknown_keys}; tables are {sorted(tables)}")
    index_tables = dict(index_tables or {})
    unknown = sorted(set(index_tables) - set(indices))
    if unknown:
        raise SpecError(f"index_tables names indices that were not given: {unknown}")
    index_info: dict[str, IndexInfo] = {}
    index_arrays: dict[str, np.ndarray] = {}
    for name, values in indices.items():
        check_index_name(name)
        table = index_tables.get(name)
        if table is not None and table not in tables:
            raise SpecError(f"index {name!r} points to unknown table {table!r}; tables are {sorted(tables)}")
        bound = tables[table].rows if table is not None else None
        index_arrays[name] = _check_index(name, values, bound, table)
        index_info[name] = IndexInfo(length=int(index_arrays[name].shape[0]), table=table)
    _check_no_nesting_clash(list(index_arrays))
    return Layout(
        fingerprint=normalize_json(dict(fingerprint)),
        tables=dict(tables),
        keys={name: _check_keys(name, spec, keys.get(name)) for name, spec in tables.items()},
        indices=index_arrays,
        index_info=index_info,
    )
