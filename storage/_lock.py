"""Exclusive writer lock: an OS-level `flock` on a file inside the store.

The kernel drops a `flock` when its holder dies, even by SIGKILL, so a crashed writer never
leaves a stale lock. The lock file itself is never deleted: unlinking it while another process
waits on it would let two writers lock two different inodes of the same name.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from .errors import StoreLockedError
from .manifest import utc_now


def _holder_description(fd: int) -> str:
    # Best effort: the holder may be between truncating and rewriting the file.
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        info = json.loads(text)
        return f"pid {info['pid']} on host {info['host']} (since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "an unknown process"


@dataclass
class StoreLock:
    """An acquired lock; `release()` (idempotent) or process exit frees it."""

    path: Path
    fd: int | None

    @classmethod
    def acquire(cls, path: Path) -> StoreLock:
        """Take the lock without waiting; StoreLockedError names the holder when it is taken."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_description(fd)
            os.close(fd)
            raise StoreLockedError(
                f"store {path.parent} is being written by {holder}; wait for it to finish or stop it "
                f"(a killed writer releases the lock automatically)"
            ) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": utc_now()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
        return cls(path=path, fd=fd)

    @property
    def held(self) -> bool:
        return self.fd is not None

    def release(self) -> None:
        """Unlock and close; closing the descriptor is what frees a `flock`."""
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)
