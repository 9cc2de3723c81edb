"""Single-file HDF5 export of a complete store, and import back into an identical store.

The HDF5 file holds the same datasets (`<table>/emb`, `<table>/keys` as UTF-8 strings,
`index/<name>`) and the manifest as JSON in the root attribute `manifest`.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import h5py
import numpy as np

from ._layout import build_layout, emb_name, index_array_name, keys_name
from ._zarrio import array_sha256
from .errors import CorruptStoreError, NotAStoreError, OutputExistsError
from .manifest import FORMAT_NAME, Manifest, canonical_json
from .reader import FeatureStore
from .writer import StoreWriter

_STRING = h5py.string_dtype("utf-8")


def export_hdf5(store_path: str | Path, h5_path: str | Path, overwrite: bool = False) -> Path:
    """Copy a complete store into one HDF5 file, checking every shard checksum on the way.

    The file appears atomically (written under a temp name, then renamed).
    """
    store = FeatureStore.open(store_path)
    target = Path(h5_path)
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target} already exists; pass overwrite=True to replace it")
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        with h5py.File(tmp, "w") as h5:
            h5.attrs["format"] = FORMAT_NAME
            h5.attrs["manifest"] = canonical_json(store.manifest.to_attrs())
            for table in store.tables():
                _export_table(store, table, h5)
            for name in store.index_names():
                h5.create_dataset(index_array_name(name), data=store.load_index(name))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _export_table(store: FeatureStore, table: str, h5: h5py.File) -> None:
    spec = store.table_spec(table)
    keys = store.table_keys(table)
    keys_ds = h5.create_dataset(keys_name(table), shape=(len(keys),), dtype=_STRING)
    if keys:
        keys_ds[:] = keys
    emb = h5.create_dataset(emb_name(table), shape=(spec.rows, *spec.row_shape), dtype=spec.dtype)
    checksums = store.manifest.shard_checksums[table]
    for shard in range(spec.num_shards):
        start, stop = spec.shard_range(shard)
        values = store.read_shard(table, shard)
        if array_sha256(values) != checksums[shard]:
            raise CorruptStoreError(
                f"store {store.path}: table {table!r} shard {shard} does not match its checksum; "
                f"run verify_store and rebuild the store before exporting"
            )
        emb[start:stop] = values


def _read_manifest(h5: h5py.File, source: Path) -> Manifest:
    if h5.attrs.get("format") != FORMAT_NAME or "manifest" not in h5.attrs:
        raise NotAStoreError(
            f"{source} is not a feature-store HDF5 export (no format={FORMAT_NAME!r} attribute)"
        )
    manifest = Manifest.from_attrs(json.loads(h5.attrs["manifest"]), where=str(source))
    if not manifest.complete:
        raise NotAStoreError(
            f"{source} holds an incomplete store's manifest; exports are made from complete stores"
        )
    return manifest


def import_hdf5(h5_path: str | Path, store_path: str | Path, force: bool = False) -> Manifest:
    """Recreate a complete store from an HDF5 export: same arrays, checksums and manifest.

    Resumes like a normal writer if interrupted; `force` wipes an existing store at `store_path`.
    """
    source = Path(h5_path)
    with h5py.File(source, "r") as h5:
        manifest = _read_manifest(h5, source)
        layout = build_layout(
            manifest.fingerprint,
            manifest.tables,
            {table: h5[keys_name(table)].asstr()[()].tolist() for table in manifest.tables},
            {name: np.asarray(h5[index_array_name(name)]) for name in manifest.indices},
            {name: info.table for name, info in manifest.indices.items() if info.table is not None},
        )
        # Keep the original timestamps so the recreated manifest equals the exported one.
        with StoreWriter._open(
            Path(store_path), layout, manifest.extra, force, created=manifest.created
        ) as writer:
            for table in manifest.tables:
                emb = h5[emb_name(table)]
                for shard in writer.pending_shards(table):
                    start, stop = writer.shard_range(table, shard)
                    writer.write_shard(table, shard, emb[start:stop])
                if writer.shard_checksums(table) != manifest.shard_checksums[table]:
                    raise CorruptStoreError(
                        f"{source}: table {table!r} does not match the checksums in its manifest"
                    )
            return writer._finalize(completed=manifest.completed)
