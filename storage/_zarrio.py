"""Zarr access shared by writer, reader and verifier: groups, arrays, shard objects, markers."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import ZstdCodec
from zarr.storage import LocalStore

from ._layout import ROOT_METADATA, emb_name, index_array_name, keys_name, marker_path
from .errors import NotAStoreError, UnknownNameError
from .manifest import Layout, Manifest

# Fixed codecs (not zarr's "auto") so a store's bytes never depend on zarr's config; the zstd
# frame checksum makes a flipped byte in a shard a decode error instead of silently wrong data.
COMPRESSORS = (ZstdCodec(level=3, checksum=True),)
CHUNK_KEY_ENCODING: dict[str, Any] = {"name": "default", "separator": "/"}
# Keys and index arrays are small and read whole; large chunks keep the file count low.
KEY_CHUNK_ROWS = 65536
INDEX_CHUNK_ROWS = 1 << 20


def has_zarr_group(root: Path) -> bool:
    """Whether `root` holds Zarr node metadata (ours or someone else's)."""
    return (root / ROOT_METADATA).is_file()


def open_group(root: Path, writable: bool = False) -> zarr.Group:
    """Open the store's root group; NotAStoreError when there is none."""
    if not root.is_dir() or not has_zarr_group(root):
        raise NotAStoreError(f"{root} is not a feature store (no directory with a Zarr group in it)")
    try:
        return zarr.open_group(LocalStore(root, read_only=not writable), mode="r+" if writable else "r")
    # zarr metadata errors are ValueErrors; a zarr.json of the wrong JSON shape raises the others
    except (ValueError, FileNotFoundError, TypeError, KeyError, AttributeError) as exc:
        raise NotAStoreError(f"{root} is not a feature store: {exc}") from exc


def read_manifest(root: Path) -> Manifest:
    """The manifest of the store at `root`."""
    return Manifest.from_attrs(open_group(root).attrs.asdict(), where=str(root))


def emb_array(group: zarr.Group, table: str) -> zarr.Array:
    """The row array of a table."""
    try:
        return group[emb_name(table)]
    except KeyError as exc:
        raise UnknownNameError(f"store has no array for table {table!r}") from exc


def shard_object_path(root: Path, array: zarr.Array, shard: int) -> Path:
    """File holding one whole shard (a shard spans the full row shape, so its other coords are 0)."""
    coords = (shard,) + (0,) * (array.ndim - 1)
    return root / array.path / array.metadata.encode_chunk_key(coords)


def array_sha256(values: np.ndarray) -> str:
    """sha256 of the values' little-endian C-order bytes: independent of codecs and file layout."""
    canonical = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<"))
    return hashlib.sha256(canonical.tobytes()).hexdigest()


def file_sha256(path: Path, sync: bool = False) -> str | None:
    """sha256 of a file's bytes, or None if it does not exist; `sync` also flushes it to disk."""
    try:
        with path.open("rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
            if sync:
                os.fsync(handle.fileno())
            return digest
    except FileNotFoundError:
        return None


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write JSON via a unique temp file + fsync + os.replace: readers see all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            json.dump(data, handle, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class ShardMarker:
    """Completion record of one shard, written after its data.

    `sha256` is over the shard's array bytes (goes to the manifest); `object_sha256` is over the
    stored object, so checking that a shard is still intact needs no decoding.
    """

    table: str
    shard: int
    start: int
    stop: int
    sha256: str
    object_sha256: str

    def write(self, root: Path) -> None:
        write_json_atomic(marker_path(root, self.table, self.shard), asdict(self))

    @classmethod
    def read(cls, root: Path, table: str, shard: int) -> ShardMarker | None:
        """The marker, or None when it is missing or unreadable (the shard then counts as pending)."""
        try:
            data = json.loads(marker_path(root, table, shard).read_text(encoding="utf-8"))
            marker = cls(**data)
        except (OSError, ValueError, TypeError):
            return None
        return marker if (marker.table, marker.shard) == (table, shard) else None


def shard_is_complete(root: Path, array: zarr.Array, table: str, shard: int) -> bool:
    """Marker present and the shard object on disk still hashes to what the marker recorded."""
    marker = ShardMarker.read(root, table, shard)
    if marker is None:
        return False
    return file_sha256(shard_object_path(root, array, shard)) == marker.object_sha256


def create_arrays(group: zarr.Group, layout: Layout) -> None:
    """Create every table array (empty, NaN-filled) and write the keys and index arrays."""
    for table, spec in layout.tables.items():
        group.create_array(
            name=emb_name(table),
            shape=(spec.rows, *spec.row_shape),
            dtype=spec.dtype,
            chunks=(spec.chunk_rows, *spec.row_shape),
            shards=(spec.shard_rows, *spec.row_shape),
            # NaN never passes write_shard, so a NaN row on disk always means "never written".
            fill_value=np.nan,
            compressors=COMPRESSORS,
            chunk_key_encoding=CHUNK_KEY_ENCODING,
        )
        _create_keys(group, table, layout.keys[table])
    for name, values in layout.indices.items():
        array = group.create_array(
            name=index_array_name(name),
            shape=values.shape,
            dtype="int32",
            chunks=(max(1, min(values.shape[0], INDEX_CHUNK_ROWS)),),
            fill_value=-1,
            compressors=COMPRESSORS,
            chunk_key_encoding=CHUNK_KEY_ENCODING,
        )
        if values.size:
            array[:] = values


def _create_keys(group: zarr.Group, table: str, keys: list[str]) -> None:
    array = group.create_array(
        name=keys_name(table),
        shape=(len(keys),),
        dtype=str,
        chunks=(max(1, min(len(keys), KEY_CHUNK_ROWS)),),
        compressors=COMPRESSORS,
        chunk_key_encoding=CHUNK_KEY_ENCODING,
    )
    if keys:
        array[:] = np.array(keys, dtype=np.dtypes.StringDType())


def read_keys(group: zarr.Group, table: str) -> list[str]:
    """All row keys of a table, in row order."""
    try:
        array = group[keys_name(table)]
    except KeyError as exc:
        raise UnknownNameError(f"store has no keys for table {table!r}") from exc
    return array[:].tolist() if array.shape[0] else []


def read_index(group: zarr.Group, name: str) -> np.ndarray:
    """A whole index array as int32."""
    try:
        array = group[index_array_name(name)]
    except KeyError as exc:
        raise UnknownNameError(f"store has no index array {name!r}") from exc
    return np.asarray(array[:], dtype=np.int32)
