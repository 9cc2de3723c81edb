"""Read-only access to a finished store."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ._zarrio import emb_array, open_group, read_index, read_keys
from .errors import FingerprintMismatchError, IncompleteStoreError, UnknownNameError
from .manifest import Manifest, TableSpec, describe_diffs, diff_keys, normalize_json


class FeatureStore:
    """A store opened for reading; tables are loaded whole into RAM in one read each."""

    def __init__(self, root: Path, group: zarr.Group, manifest: Manifest) -> None:
        """Use `FeatureStore.open`."""
        self._root = root
        self._group = group
        self._manifest = manifest

    @classmethod
    def open(
        cls,
        path: str | Path,
        expected_fingerprint: Mapping[str, Any] | None = None,
        require_complete: bool = True,
    ) -> FeatureStore:
        """Open the store at `path`, checking completeness and (if given) the fingerprint."""
        root = Path(path)
        group = open_group(root)
        manifest = Manifest.from_attrs(group.attrs.asdict(), where=str(root))
        if require_complete and not manifest.complete:
            raise IncompleteStoreError(
                f"store {root} is incomplete (its writer stopped before finalizing); rerun the cache job "
                f"with the same settings to resume it"
            )
        if expected_fingerprint is not None:
            _check_expected(root, manifest, expected_fingerprint)
        return cls(root, group, manifest)

    @property
    def path(self) -> Path:
        return self._root

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self._manifest.fingerprint

    @property
    def fingerprint_id(self) -> str:
        return self._manifest.fingerprint_id

    @property
    def extra(self) -> dict[str, Any]:
        return self._manifest.extra

    @property
    def complete(self) -> bool:
        return self._manifest.complete

    def tables(self) -> list[str]:
        return list(self._manifest.tables)

    def table_spec(self, table: str) -> TableSpec:
        try:
            return self._manifest.tables[table]
        except KeyError:
            raise UnknownNameError(f"unknown table {table!r}; the store has {self.tables()}") from None

    def index_names(self) -> list[str]:
        return list(self._manifest.indices)

    def table_keys(self, table: str) -> list[str]:
        """Row keys of a table, in row order."""
        self.table_spec(table)
        return read_keys(self._group, table)

    def load_table(self, table: str, dtype: str | np.dtype | None = None) -> np.ndarray:
        """The whole table `[rows, *row_shape]`, optionally cast (e.g. to float32 for compute)."""
        self.table_spec(table)
        values = emb_array(self._group, table)[...]
        return values if dtype is None else values.astype(dtype, copy=False)

    def read_shard(self, table: str, shard: int) -> np.ndarray:
        """The rows of one shard (see `TableSpec.shard_range`), for streaming a table piecewise."""
        start, stop = self.table_spec(table).shard_range(shard)
        return emb_array(self._group, table)[start:stop]

    def load_index(self, name: str) -> np.ndarray:
        """A whole int32 index array (-1 means "no row")."""
        if name not in self._manifest.indices:
            raise UnknownNameError(f"unknown index {name!r}; the store has {self.index_names()}")
        return read_index(self._group, name)

    def __repr__(self) -> str:
        tables = ", ".join(f"{n}={s.rows}x{s.row_shape}:{s.dtype}" for n, s in self._manifest.tables.items())
        return f"FeatureStore({str(self._root)!r}, {self.fingerprint_id[:12]}, {tables})"


def _check_expected(root: Path, manifest: Manifest, expected: Mapping[str, Any]) -> None:
    diffs = diff_keys(manifest.fingerprint, normalize_json(dict(expected)))
    if diffs:
        keys = [key for key, _, _ in diffs]
        raise FingerprintMismatchError(
            f"store {root} was built for a different fingerprint (differing keys: {', '.join(keys)}): "
            f"{describe_diffs(diffs)}. Rerun the cache job for the current settings: with --force to "
            f"overwrite this store, or with another output path.",
            keys,
        )
