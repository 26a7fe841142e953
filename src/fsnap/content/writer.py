"""Ingestion: how bytes from the network become a committed, verified, read-only blob.

A ``Writer`` is keyed by a *ref* (free text; the puller uses the digest). Its bytes go to
``<root>/ingest/<sha256(ref)>/data`` and its state to the LMDB table ``ingests``. Opening
the same ref again resumes: the data file is the truth about the offset, and the bytes
already there are re-hashed so the final digest check still covers every byte.

Only one writer may hold a ref at a time, across processes: the writer holds an exclusive
``flock`` on ``<sha256(ref)>.lock`` from open to commit/close. A second opener gets Busy
at once rather than blocking, so an async caller can wait without tying up a thread.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import IO

from fsnap.content.store import INGEST_TABLE, ContentStore, Info, fsync_dir
from fsnap.digest import hasher
from fsnap.errors import AlreadyExists, Busy, DigestMismatch
from fsnap.locking import try_exclusive
from fsnap.oci import Descriptor

# How often a writer refreshes its LMDB status record: each write transaction syncs, so
# doing it per chunk would cost more than the download.
STATUS_INTERVAL = 1.0
REHASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class IngestStatus:
    """Progress of one ingest: ``offset`` bytes of ``total`` are on disk."""

    ref: str
    offset: int
    total: int
    expected: str
    started: float
    updated: float


class Writer:
    """A locked, resumable ingest of one expected blob. Use ``ContentStore.writer``."""

    def __init__(self, store: ContentStore, ref: str, expected: Descriptor, lock_fd: int) -> None:
        self.store = store
        self.ref = ref
        self.expected = expected
        self._lock_fd: int | None = lock_fd
        self._dir = store.ingest_dir(ref)
        self._data = self._dir / "data"
        self._hash = hasher(expected.digest)
        self._offset = 0
        self._started = time.time()
        self._status_at = 0.0
        self._file: IO[bytes] | None = None

    @classmethod
    def open(cls, store: ContentStore, ref: str, expected: Descriptor) -> Writer:
        lock_fd = _try_lock(store, ref)
        writer = cls(store, ref, expected, lock_fd)
        try:
            writer._resume()
        except BaseException:
            writer._release()
            raise
        return writer

    @property
    def offset(self) -> int:
        """Bytes written so far, including those found on disk when the ingest resumed."""
        return self._offset

    def _resume(self) -> None:
        """Pick up bytes left by an earlier writer of the same ref, or start afresh."""
        record = self.store.db.get_json(INGEST_TABLE, self.ref)
        same_blob = record is not None and record["expected"]["digest"] == self.expected.digest
        if record is not None and same_blob:
            self._started = float(record["started"])
        self._dir.mkdir(parents=True, exist_ok=True)
        size = self._data.stat().st_size if self._data.exists() else 0
        if not same_blob or size > self.expected.size:
            size = 0
        with open(self._data, "a+b") as handle:
            handle.truncate(size)
            handle.seek(0)
            remaining = size
            while remaining:
                chunk = handle.read(min(REHASH_CHUNK, remaining))
                if not chunk:
                    break
                self._hash.update(chunk)
                remaining -= len(chunk)
        self._offset = size
        # Held open across calls until commit/close, so no ``with`` block can own it.
        self._file = open(self._data, "ab")  # noqa: SIM115
        self._save_status()

    def write(self, data: bytes) -> None:
        """Append ``data``. Blocking (hashing, disk): call it from a worker thread."""
        if self._offset + len(data) > self.expected.size:
            self.discard()
            raise DigestMismatch(
                f"blob {self.expected.digest}: received more than the expected "
                f"{self.expected.size} bytes"
            )
        assert self._file is not None, "write after commit, close or discard"
        self._file.write(data)
        self._hash.update(data)
        self._offset += len(data)
        if time.monotonic() - self._status_at >= STATUS_INTERVAL:
            self._save_status()

    def commit(self, labels: Mapping[str, str] | None = None) -> Info:
        """Verify size and digest, then move the blob into place read-only and index it.

        On a mismatch the ingest is discarded (so a retry starts clean) and DigestMismatch
        names the digest. If the blob is already committed, the ingest is discarded and
        AlreadyExists is raised: for a puller that is success.
        """
        digest = self.expected.digest
        if self._offset != self.expected.size:
            self.discard()
            raise DigestMismatch(
                f"blob {digest}: got {self._offset} bytes, expected {self.expected.size}"
            )
        actual = f"{digest.split(':', 1)[0]}:{self._hash.hexdigest()}"
        if actual != digest:
            self.discard()
            raise DigestMismatch(f"blob {digest} failed verification: its bytes hash to {actual}")
        if self.store.exists(digest):
            self.discard()
            raise AlreadyExists(f"content {digest} already exists")
        assert self._file is not None, "commit after close or discard"
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        target = self.store.path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self._data, 0o444)
        os.replace(self._data, target)
        fsync_dir(target.parent)
        info = self.store.record(digest, self.expected.size, labels or {})
        self._forget()
        return info

    def close(self) -> None:
        """Stop writing but keep the partial data and state, so the ref can resume later."""
        if self._file is not None:
            self._file.close()
            self._file = None
            self._save_status()
        self._release()

    def discard(self) -> None:
        """Drop the partial data and the ingest record, and release the ref."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._forget()

    def _forget(self) -> None:
        self.store.db.delete(INGEST_TABLE, self.ref)
        self.store.remove_ingest_dir(self.ref)
        self._release()

    def _save_status(self) -> None:
        self._status_at = time.monotonic()
        self.store.db.put_json(
            INGEST_TABLE,
            self.ref,
            {
                "ref": self.ref,
                "offset": self._offset,
                "total": self.expected.size,
                "expected": self.expected.to_json(),
                "started": self._started,
                "updated": time.time(),
            },
        )

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    def __enter__(self) -> Writer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _try_lock(store: ContentStore, ref: str) -> int:
    """An fd holding the exclusive lock of ``ref``, or Busy if someone else holds it."""
    fd = try_exclusive(store.lock_path(ref))
    if fd is None:
        raise Busy(f"ingest {ref!r} is in progress in another writer")
    return fd
