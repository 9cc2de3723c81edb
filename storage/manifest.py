"""Table specs, the manifest kept in the store's group attributes, and fingerprint helpers."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from .errors import NotAStoreError, SpecError, UnknownNameError

FORMAT_NAME = "feature-store"
FORMAT_VERSION = 1
SUPPORTED_DTYPES = ("float16", "float32")
DEFAULT_CHUNK_ROWS = 256

# Stands for "key absent on this side" in fingerprint diffs (a real value could be any string).
_MISSING = object()
# Longest value repr shown in a fingerprint diff; fingerprints may hold long paths or lists.
_DIFF_VALUE_CHARS = 60


def _numpy_to_json(value: Any) -> Any:
    # Callers often count rows with numpy; accept its scalars and arrays as plain JSON values.
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces; NaN/inf refused so the text is portable."""
    try:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), allow_nan=False, default=_numpy_to_json
        )
    except (TypeError, ValueError) as exc:
        raise SpecError(f"value is not JSON-serialisable: {exc}") from exc


def fingerprint_id(fingerprint: Mapping[str, Any]) -> str:
    """sha256 hex of the canonical JSON of a fingerprint dict."""
    return hashlib.sha256(canonical_json(dict(fingerprint)).encode("utf-8")).hexdigest()


def normalize_json(value: Any) -> Any:
    """The value as it reads back from JSON (tuples become lists, ...), so comparisons are fair."""
    return json.loads(canonical_json(value))


def diff_keys(stored: Any, expected: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """Dotted key paths whose values differ between two JSON-like dicts, with both values."""
    if not (isinstance(stored, dict) and isinstance(expected, dict)):
        return [] if stored == expected else [(prefix or "<root>", stored, expected)]
    diffs: list[tuple[str, Any, Any]] = []
    for key in sorted(set(stored) | set(expected), key=str):
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in stored:
            diffs.append((path, _MISSING, expected[key]))
        elif key not in expected:
            diffs.append((path, stored[key], _MISSING))
        else:
            diffs.extend(diff_keys(stored[key], expected[key], path))
    return diffs


def describe_diffs(diffs: list[tuple[str, Any, Any]]) -> str:
    """One line per differing key: `key: store=<v> expected=<v>`, values shortened."""

    def short(value: Any) -> str:
        text = "<missing>" if value is _MISSING else json.dumps(value, default=str)
        return text if len(text) <= _DIFF_VALUE_CHARS else text[: _DIFF_VALUE_CHARS - 3] + "..."

    return "; ".join(f"{key}: store={short(old)} expected={short(new)}" for key, old, new in diffs)


def utc_now() -> str:
    """Second-resolution ISO-8601 UTC timestamp."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def _default_chunk_rows(shard_rows: int) -> int:
    # Zarr needs the shard shape to be a multiple of the inner chunk shape, so pick the
    # largest divisor of shard_rows not above DEFAULT_CHUNK_ROWS.
    return max(d for d in range(1, min(shard_rows, DEFAULT_CHUNK_ROWS) + 1) if shard_rows % d == 0)


@dataclass(frozen=True)
class TableSpec:
    """Shape of one table: `rows` rows of `row_shape`, stored in shards of `shard_rows` rows.

    One shard is one object on disk and the unit of writing, checksumming and resuming.
    `chunk_rows` (inner chunk, the unit of partial reads) defaults to a divisor of
    `shard_rows` no larger than 256.
    """

    rows: int
    row_shape: tuple[int, ...]
    dtype: str = "float16"
    shard_rows: int = 4096
    chunk_rows: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.rows, bool) or not isinstance(self.rows, int | np.integer) or self.rows < 0:
            raise SpecError(f"TableSpec.rows must be an int >= 0, got {self.rows!r}")
        object.__setattr__(self, "rows", int(self.rows))
        object.__setattr__(self, "row_shape", _parse_row_shape(self.row_shape))
        object.__setattr__(self, "dtype", _parse_dtype(self.dtype))
        if not _is_positive_int(self.shard_rows):
            raise SpecError(f"TableSpec.shard_rows must be an int >= 1, got {self.shard_rows!r}")
        object.__setattr__(self, "shard_rows", int(self.shard_rows))
        chunk_rows = _default_chunk_rows(self.shard_rows) if self.chunk_rows is None else self.chunk_rows
        if not _is_positive_int(chunk_rows) or self.shard_rows % chunk_rows:
            raise SpecError(
                f"TableSpec.chunk_rows must be a positive divisor of shard_rows={self.shard_rows}, "
                f"got {chunk_rows!r}"
            )
        object.__setattr__(self, "chunk_rows", int(chunk_rows))

    @property
    def num_shards(self) -> int:
        """Number of shards; the last one may hold fewer than `shard_rows` rows."""
        return -(-self.rows // self.shard_rows)

    def shard_range(self, shard: int) -> tuple[int, int]:
        """Row range [start, stop) of a shard."""
        if (
            isinstance(shard, bool)
            or not isinstance(shard, int | np.integer)
            or not 0 <= shard < self.num_shards
        ):
            raise UnknownNameError(f"shard {shard!r} out of range: the table has {self.num_shards} shards")
        start = int(shard) * self.shard_rows
        return start, min(start + self.shard_rows, self.rows)

    def to_json(self) -> dict[str, Any]:
        """The manifest entry of this table."""
        return {
            "rows": self.rows,
            "row_shape": list(self.row_shape),
            "dtype": self.dtype,
            "shard_rows": self.shard_rows,
            "chunk_rows": self.chunk_rows,
            "shards": self.num_shards,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TableSpec:
        """Inverse of `to_json` (the derived `shards` count is ignored)."""
        return cls(
            rows=data["rows"],
            row_shape=tuple(data["row_shape"]),
            dtype=data["dtype"],
            shard_rows=data["shard_rows"],
            chunk_rows=data["chunk_rows"],
        )


def _is_positive_int(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | np.integer) and value >= 1


def _parse_row_shape(row_shape: Any) -> tuple[int, ...]:
    try:
        shape = tuple(row_shape)
    except TypeError as exc:
        raise SpecError(f"TableSpec.row_shape must be a tuple of ints, got {row_shape!r}") from exc
    if not all(_is_positive_int(d) for d in shape):
        raise SpecError(f"TableSpec.row_shape must hold ints >= 1, got {row_shape!r}")
    return tuple(int(d) for d in shape)


def _parse_dtype(dtype: Any) -> str:
    try:
        name = np.dtype(dtype).name
    except TypeError as exc:
        raise SpecError(f"TableSpec.dtype {dtype!r} is not a numpy dtype") from exc
    if name not in SUPPORTED_DTYPES:
        raise SpecError(f"TableSpec.dtype must be one of {SUPPORTED_DTYPES}, got {dtype!r}")
    return name


@dataclass(frozen=True)
class IndexInfo:
    """An int32 index array: its length and, when declared, the table whose rows it points to."""

    length: int
    table: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"length": self.length, "table": self.table}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> IndexInfo:
        return cls(length=int(data["length"]), table=data.get("table"))


@dataclass(frozen=True)
class Manifest:
    """Everything the store records about itself; kept as top-level group attributes.

    `complete` is written last by the writer, so a store with `complete=True` has every
    shard and checksum in place.
    """

    fingerprint: dict[str, Any]
    fingerprint_id: str
    tables: dict[str, TableSpec]
    indices: dict[str, IndexInfo]
    shard_checksums: dict[str, list[str]]
    extra: dict[str, Any]
    created: str
    completed: str | None = None
    complete: bool = False
    format_version: int = FORMAT_VERSION

    def to_attrs(self) -> dict[str, Any]:
        """JSON-able dict, exactly as stored in the group attributes."""
        return {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "fingerprint": self.fingerprint,
            "fingerprint_id": self.fingerprint_id,
            "tables": {name: spec.to_json() for name, spec in self.tables.items()},
            "indices": {name: info.to_json() for name, info in self.indices.items()},
            "shard_checksums": self.shard_checksums,
            "extra": self.extra,
            "created": self.created,
            "completed": self.completed,
            "complete": self.complete,
        }

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], where: str = "store") -> Manifest:
        """Parse group attributes; NotAStoreError when they are not a feature-store manifest."""
        if attrs.get("format") != FORMAT_NAME:
            raise NotAStoreError(
                f"{where} is a Zarr group but not a feature store (no format={FORMAT_NAME!r})"
            )
        if attrs.get("format_version") != FORMAT_VERSION:
            raise NotAStoreError(
                f"{where} has format_version={attrs.get('format_version')!r}; this code reads "
                f"{FORMAT_VERSION} (rebuild the store with --force)"
            )
        return cls(
            fingerprint=dict(attrs["fingerprint"]),
            fingerprint_id=attrs["fingerprint_id"],
            tables={n: TableSpec.from_json(t) for n, t in attrs.get("tables", {}).items()},
            indices={n: IndexInfo.from_json(i) for n, i in attrs.get("indices", {}).items()},
            shard_checksums={n: list(c) for n, c in attrs.get("shard_checksums", {}).items()},
            extra=dict(attrs.get("extra", {})),
            created=attrs["created"],
            completed=attrs.get("completed"),
            complete=bool(attrs.get("complete", False)),
            format_version=attrs["format_version"],
        )


@dataclass(frozen=True)
class Layout:
    """What a writer is asked to build: validated tables, keys and index arrays."""

    fingerprint: dict[str, Any]
    tables: dict[str, TableSpec]
    keys: dict[str, list[str]]
    indices: dict[str, np.ndarray]
    index_info: dict[str, IndexInfo] = field(default_factory=dict)

    @property
    def fingerprint_id(self) -> str:
        return fingerprint_id(self.fingerprint)
