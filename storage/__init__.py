"""Zarr v3 feature store: arrays, keys, manifests and checksums. Imports nothing of `pipeline`.

A store is a directory holding one Zarr group: per table `<table>/keys` (row keys) and
`<table>/emb` (rows, written in whole shards), `index/<name>` int32 arrays, and the manifest
in the group attributes. See `StoreWriter` (build/resume), `write_shard` (from any process),
`FeatureStore` (read), `verify_store`, `store_info`, `export_hdf5`/`import_hdf5`.
"""

from .errors import (
    CorruptStoreError,
    FingerprintMismatchError,
    IncompleteStoreError,
    LayoutMismatchError,
    NotAStoreError,
    OutputExistsError,
    ShardsPendingError,
    ShardValueError,
    SpecError,
    StoreCompleteError,
    StoreError,
    StoreLockedError,
    UnknownNameError,
    WriterClosedError,
)
from .hdf5 import export_hdf5, import_hdf5
from .manifest import FORMAT_VERSION, IndexInfo, Manifest, TableSpec, canonical_json, fingerprint_id
from .reader import FeatureStore
from .verify import VerifyReport, store_info, verify_store
from .writer import StoreWriter, write_shard

__all__ = [
    "FORMAT_VERSION",
    "CorruptStoreError",
    "FeatureStore",
    "FingerprintMismatchError",
    "IncompleteStoreError",
    "IndexInfo",
    "LayoutMismatchError",
    "Manifest",
    "NotAStoreError",
    "OutputExistsError",
    "ShardValueError",
    "ShardsPendingError",
    "SpecError",
    "StoreCompleteError",
    "StoreError",
    "StoreLockedError",
    "StoreWriter",
    "TableSpec",
    "UnknownNameError",
    "VerifyReport",
    "WriterClosedError",
    "canonical_json",
    "export_hdf5",
    "fingerprint_id",
    "import_hdf5",
    "store_info",
    "verify_store",
    "write_shard",
]
