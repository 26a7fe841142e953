"""The ``Writer`` of the content store: how bytes from the network become a committed,
verified, read-only blob.

A writer is keyed by a *ref* (free text; the puller uses the digest). It holds the ref's
lock from open to commit/close, appends to the ref's data file and refreshes its status
record (``fsnap.content.ingest``: the layout and the crash protocol). Opening the same ref
again resumes: the data file is the truth about the offset, and the bytes already there
are re-hashed so the final digest check still covers every byte. A second opener gets Busy
at once rather than blocking, so an async caller can wait without tying up a thread.

The last step of a commit, moving the verified file into place and indexing it, belongs
to the store of committed blobs: the writer is given it as ``publish``.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO

from fsnap.content.api import Info
from fsnap.content.ingest import Ingests
from fsnap.digest import hasher
from fsnap.errors import AlreadyExists, DigestMismatch
from fsnap.oci import Descriptor

# How often a writer refreshes its LMDB status record: each write transaction syncs, so
# doing it per chunk would cost more than the download. The first record is written with
# the first bytes, not at the open: a pull opens its layers' writers one after the other
# before their requests, and a synced transaction at each open (~25 ms at load 5) held
# the next layer's request back (docs/benchmarks.md, "The writers' first records").
STATUS_INTERVAL = 1.0

# Make the verified, flushed file at ``Path`` the committed blob ``Descriptor`` with these
# labels; ``AlreadyExists`` if it is committed already (then the file is left where it is).
Publish = Callable[[Path, Descriptor, Mapping[str, str]], Info]


class IngestWriter:
    """A locked, resumable ingest of one expected blob (``fsnap.content.api.Writer``).
    Use ``ContentStore.writer``."""

    _offset: int  # bytes in the data file; set by ``_resume``, which ``open`` always runs
    _status_at: float  # monotonic time of the last status save (-inf: none yet)
    _recorded: bool  # whether the ingest table may hold a record of this ref

    def __init__(
        self, ingests: Ingests, publish: Publish, ref: str, expected: Descriptor, lock_fd: int
    ) -> None:
        self.ingests = ingests
        self.ref = ref
        self.expected = expected
        self._publish = publish
        self._lock_fd: int | None = lock_fd
        self._data = ingests.data_path(ref)
        self._hash = hasher(expected.digest)
        self._started = time.time()
        self._file: IO[bytes] | None = None

    @classmethod
    def open(
        cls, ingests: Ingests, publish: Publish, ref: str, expected: Descriptor
    ) -> IngestWriter:
        writer = cls(ingests, publish, ref, expected, ingests.lock(ref))
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
        record = self.ingests.record(self.ref)
        same_blob = record is not None and record["expected"]["digest"] == self.expected.digest
        self._recorded = record is not None
        if record is not None and same_blob:
            self._started = float(record["started"])
        self._data.parent.mkdir(exist_ok=True)  # in the ingest root, which holds the lock
        size = self._data.stat().st_size if self._data.exists() else 0
        if not same_blob or size > self.expected.size:
            size = 0
        with open(self._data, "a+b") as handle:
            handle.truncate(size)
            handle.seek(0)
            self._hash = hashlib.file_digest(handle, lambda: hasher(self.expected.digest))
        self._offset = size
        # Held open across calls until commit/close, so no ``with`` block can own it.
        self._file = open(self._data, "ab")  # noqa: SIM115
        self._status_at = -math.inf
        if record is not None and not same_blob:
            self._save_status()  # the record describes another blob: replace it now

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
        whole = self._offset == 0 and len(data) == self.expected.size
        self._offset += len(data)
        if whole and self._status_at == -math.inf:
            return  # all of a blob in one write: its commit follows, which forgets records
        if time.monotonic() - self._status_at >= STATUS_INTERVAL:
            self._save_status()

    def open_written(self) -> IO[bytes]:
        """The bytes written so far, opened for reading from the start (read at most
        ``offset`` of them: the file grows as this writer goes on)."""
        assert self._file is not None, "read after commit, close or discard"
        self._file.flush()
        return open(self._data, "rb")

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
        actual = f"{digest.partition(':')[0]}:{self._hash.hexdigest()}"
        if actual != digest:
            self.discard()
            raise DigestMismatch(f"blob {digest} failed verification: its bytes hash to {actual}")
        assert self._file is not None, "commit after close or discard"
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        try:
            info = self._publish(self._data, self.expected, labels or {})
        except AlreadyExists:
            self.discard()
            raise
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
        self.ingests.forget(self.ref, recorded=self._recorded)
        self._release()

    def _save_status(self) -> None:
        self._status_at = time.monotonic()
        self.ingests.save(self.ref, self.expected, self._offset, self._started)
        self._recorded = True

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    def __enter__(self) -> IngestWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
