"""Ingest state: the blobs being written, one per ref, and who may touch them.

Layout under ``<content root>/ingest/`` (the file system of ``blobs/``, so a verified
blob moves into place with one rename)::

    <sha256(ref)>/data    the bytes written so far: the truth about the offset
    <sha256(ref)>.lock    flock'ed (exclusive) by the ref's writer from open to commit/close
    <random>              spool files of whoever builds a blob before writing it (unlinked)

plus the LMDB table ``ingests``: ref -> expected descriptor, total, started, updated.
Directories are named by a hash because refs are free text.

Crash protocol. A writer takes the lock first and holds it until it is done, so a lock
that can be taken means nobody is writing: whoever takes it may resume or remove the
ingest, and holding it keeps a writer from starting meanwhile. A lock file is never
deleted: unlinking one that others wait on would let two writers each lock a different
inode. The kernel drops an flock when its process dies, however it dies, so a killed
writer leaves its data, its status (written with its first bytes, then refreshed every
``STATUS_INTERVAL``; the data file, not the record, says how far it got) and a free lock:
the next writer resumes it, or gc removes it. A directory without a record is an
*orphan*: nothing can resume it (the next writer of its ref starts afresh), gc removes it
once its lock is free. It is left by a writer killed before its first status (so before
or during its first write; a blob written whole in one write, a document the caller holds
in memory, gets no record before its commit), or while forgetting.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from fsnap.content.api import IngestStatus
from fsnap.db import Database
from fsnap.errors import Busy, NotFound
from fsnap.fdtree import remove_tree
from fsnap.locking import exclusive_if_free, try_exclusive
from fsnap.oci import Descriptor
from fsnap.private import private_dir

INGEST_TABLE = "ingests"
DATA = "data"
LOCK_SUFFIX = ".lock"


@dataclass(frozen=True)
class Orphan:
    """An ingest directory without a record, that no writer holds (``Ingests.orphans``)."""

    name: str  # the directory's name under the ingest root
    size: int  # bytes of its partial data
    mtime: float  # last change, seconds since the epoch (inf if it vanished meanwhile)


class Ingests:
    """The ingest area of one content store: partial data, locks and status records."""

    def __init__(self, root: Path, db: Database) -> None:
        self.root = root
        self.db = db
        private_dir(root, root.parent.parent)

    # -- where things are (the layout above; for the writer, fsck and tests) ---------------

    def directory(self, ref: str) -> Path:
        """The directory holding ``ref``'s partial data."""
        return self.root / _hashed(ref)

    def data_path(self, ref: str) -> Path:
        """The file holding ``ref``'s bytes so far (its writer appends to it)."""
        return self.directory(ref) / DATA

    def lock_path(self, ref: str) -> Path:
        """The lock file of ``ref`` (never deleted: see the crash protocol)."""
        return self.root / (_hashed(ref) + LOCK_SUFFIX)

    def read_written(self, ref: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of what ``ref``'s writers have written so far, as far as
        its data file holds them: shorter (or empty) when it ends before ``end`` (or does
        not exist). Safe beside a writer: the file is read below its size at the time of
        the read, so a writer appending meanwhile is no harm, and a resumed writer's
        truncation (or a commit's rename, a discard) makes the read short or empty, never
        an error. The bytes are unverified until the blob's commit: a caller checks what
        it uses against digests of its own."""
        if end <= start:
            return b""
        try:
            fd = os.open(self.data_path(ref), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return b""
        try:
            size = os.fstat(fd).st_size
            return os.pread(fd, min(end, size) - start, start) if size > start else b""
        except OSError:
            return b""
        finally:
            os.close(fd)

    # -- a writer's side -------------------------------------------------------------------

    def lock(self, ref: str) -> int:
        """An fd holding ``ref``'s exclusive lock (closing it unlocks); ``Busy`` at once if
        another writer holds it."""
        fd = try_exclusive(self.lock_path(ref))
        if fd is None:
            raise Busy(f"ingest {ref!r} is in progress in another writer")
        return fd

    def record(self, ref: str) -> dict[str, Any] | None:
        """The status record of ``ref`` as stored, or None."""
        data: dict[str, Any] | None = self.db.get_json(INGEST_TABLE, ref)
        return data

    def save(self, ref: str, expected: Descriptor, offset: int, started: float) -> None:
        """Write ``ref``'s status record (the lock holder only)."""
        self.db.put_json(
            INGEST_TABLE,
            ref,
            {
                "ref": ref,
                "offset": offset,
                "total": expected.size,
                "expected": expected.to_json(),
                "started": started,
                "updated": time.time(),
            },
        )

    def forget(self, ref: str, *, recorded: bool = True) -> None:
        """Drop ``ref``'s record, then its partial data (the lock holder only; removing
        what is not there is no error). The record goes first: a crash in between leaves
        an orphan directory, never a record whose data is half removed. ``recorded=False``
        (the holder knows no record was ever written: only lock holders write them) skips
        the record's synced transaction."""
        if recorded:
            self.db.delete(INGEST_TABLE, ref)
        with contextlib.suppress(OSError):
            remove_tree(self.directory(ref))

    # -- what is in progress ---------------------------------------------------------------

    def status(self, ref: str) -> IngestStatus:
        data = self.record(ref)
        if data is None:
            raise NotFound(f"ingest {ref!r} not found")
        return self._status(ref, data)

    def statuses(self) -> list[IngestStatus]:
        return [self._status(ref, data) for ref, data in self.db.items_json(INGEST_TABLE)]

    def expected(self, ref: str) -> Descriptor:
        """The blob the ingest ``ref`` is for; ``NotFound`` if there is no such ingest."""
        data = self.record(ref)
        if data is None:
            raise NotFound(f"ingest {ref!r} not found")
        return Descriptor.from_json(data["expected"])

    def _status(self, ref: str, data: dict[str, Any]) -> IngestStatus:
        try:
            offset = self.data_path(ref).stat().st_size
        except FileNotFoundError:
            offset = 0
        return IngestStatus(
            ref=ref,
            offset=offset,
            total=int(data["total"]),
            expected=str(data["expected"]["digest"]),
            started=float(data["started"]),
            updated=float(data["updated"]),
        )

    # -- what gc and fsck remove -----------------------------------------------------------

    def is_idle(self, ref: str) -> bool:
        """Whether no writer holds ``ref`` right now."""
        with exclusive_if_free(self.lock_path(ref)) as idle:
            return idle

    def remove_if_idle(self, ref: str) -> bool:
        """Drop an ingest's record and partial data unless a writer holds it right now."""
        with exclusive_if_free(self.lock_path(ref)) as idle:
            if idle:
                self.forget(ref)
            return idle

    def orphans(self) -> list[Orphan]:
        """Ingest directories without a record that no writer holds right now, by name."""
        known = self._directory_names()
        found = []
        for path in sorted(self.root.iterdir()):
            if path.is_dir() and path.name not in known and self._dir_idle(path.name):
                found.append(Orphan(path.name, _dir_size(path), _mtime(path)))
        return found

    def remove_orphan_if_idle(self, name: str) -> bool:
        """Remove the orphan directory ``name`` unless a writer took it up meanwhile."""
        with exclusive_if_free(self.root / (name + LOCK_SUFFIX)) as idle:
            # A writer may have opened, written its record and closed since it was listed.
            if not idle or name in self._directory_names():
                return False
            with contextlib.suppress(OSError):
                remove_tree(self.root / name)
            return True

    def _dir_idle(self, name: str) -> bool:
        with exclusive_if_free(self.root / (name + LOCK_SUFFIX)) as idle:
            return idle

    def _directory_names(self) -> set[str]:
        return {_hashed(ref) for ref, _ in self.db.items_json(INGEST_TABLE)}

    # -- scratch space ---------------------------------------------------------------------

    def spool(self) -> IO[bytes]:
        """An anonymous temporary file on the store's file system, for a blob built before
        its digest is known (a layer tar being compressed): gone when closed, or when its
        process dies."""
        return tempfile.TemporaryFile(dir=self.root)


def _hashed(ref: str) -> str:
    return hashlib.sha256(ref.encode()).hexdigest()


def _dir_size(path: Path) -> int:
    """Bytes of the files directly in ``path`` (an ingest directory holds just ``data``)."""
    total = 0
    with contextlib.suppress(FileNotFoundError), os.scandir(path) as entries:
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                total += entry.stat(follow_symlinks=False).st_size
    return total


def _mtime(path: Path) -> float:
    with contextlib.suppress(OSError):
        return float(path.stat().st_mtime)
    return float("inf")  # vanished or unreadable: treat as new, keep it
