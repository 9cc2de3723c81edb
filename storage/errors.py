"""Exceptions raised by the feature store; every misuse maps to one of these classes."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every error raised by `storage`."""


class NotAStoreError(StoreError):
    """The path does not hold a feature store (or holds something else we must not touch)."""


class IncompleteStoreError(StoreError):
    """The store exists but was never finalized (its writer stopped or is still running)."""


class FingerprintMismatchError(StoreError):
    """The store was built for a different fingerprint than the one asked for."""

    def __init__(self, message: str, differing_keys: list[str]) -> None:
        super().__init__(message)
        self.differing_keys = differing_keys


class LayoutMismatchError(StoreError):
    """Same fingerprint, but the tables, keys or index arrays given differ from the stored ones."""


class StoreLockedError(StoreError):
    """Another writer holds the store's lock."""


class StoreCompleteError(StoreError):
    """A shard write was attempted on a finalized store; that would invalidate its manifest."""


class ShardsPendingError(StoreError):
    """`finalize` was called while some shards are not durably written yet."""


class ShardValueError(StoreError, ValueError):
    """Values given for a shard have the wrong shape or dtype, or are not finite."""


class SpecError(StoreError, ValueError):
    """A table spec, key list, index array or name given by the caller is invalid."""


class UnknownNameError(StoreError, LookupError):
    """A table, shard or index name that the store does not have."""


class WriterClosedError(StoreError):
    """The writer was used after `close()`."""


class CorruptStoreError(StoreError):
    """Stored data does not match the checksums recorded for it."""


class OutputExistsError(StoreError, FileExistsError):
    """An export target already exists and overwriting was not asked for."""
