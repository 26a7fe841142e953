"""Committed blobs: files under ``<root>/blobs/<alg>/<hex>`` plus an LMDB record each.

The file is the content; the LMDB record (table ``content``: digest -> size, created,
updated, labels) is what makes it *committed*. A writer renames a verified file into place
first and writes the record second, so a record never names a missing or unverified blob; a
file without a record (a crash between the two steps) is simply replaced by the next commit.
Labels carry containerd's gc references (``containerd.io/gc.ref.content.*``) so a collector
can walk image -> manifest -> config and layers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from fsnap.db import Database, dumps
from fsnap.digest import validate
from fsnap.errors import NotFound
from fsnap.fdtree import remove_tree
from fsnap.oci import Descriptor
from fsnap.private import private_dir

if TYPE_CHECKING:
    from fsnap.content.writer import IngestStatus, Writer

CONTENT_TABLE = "content"
INGEST_TABLE = "ingests"


@dataclass(frozen=True)
class Info:
    """What the store knows about one committed blob (times are seconds since the epoch)."""

    digest: str
    size: int
    created: float
    updated: float
    labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, digest: str, data: dict[str, Any]) -> Info:
        return cls(
            digest=digest,
            size=int(data["size"]),
            created=float(data["created"]),
            updated=float(data["updated"]),
            labels=dict(data.get("labels") or {}),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "created": self.created,
            "updated": self.updated,
            "labels": dict(self.labels),
        }


class ContentStore:
    """Blobs by digest. Safe to share between processes (LMDB + per-ingest file locks)."""

    def __init__(self, root: Path, db: Database) -> None:
        self.root = Path(root)
        self.db = db
        self.ingest_root = self.root / "ingest"
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        private_dir(self.ingest_root, self.root.parent)

    # -- committed blobs -------------------------------------------------------------------

    def path(self, digest: str) -> Path:
        """Where the blob named ``digest`` lives (whether or not it exists)."""
        algorithm, hexpart = validate(digest).split(":", 1)
        return self.root / "blobs" / algorithm / hexpart

    def info(self, digest: str) -> Info:
        data = self.db.get_json(CONTENT_TABLE, validate(digest))
        if data is None:
            raise NotFound(f"content {digest} not found")
        return Info.from_json(digest, data)

    def exists(self, digest: str) -> bool:
        return self.db.get_json(CONTENT_TABLE, validate(digest)) is not None

    def open(self, digest: str) -> IO[bytes]:
        """The committed blob, opened for reading (NotFound if it is not committed)."""
        self.info(digest)
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise NotFound(f"content {digest} is indexed but its file is missing") from None

    def read(self, digest: str) -> bytes:
        with self.open(digest) as handle:
            return handle.read()

    def walk(self) -> Iterator[Info]:
        """Every committed blob, in digest order."""
        for digest, data in self.db.items_json(CONTENT_TABLE):
            yield Info.from_json(digest, data)

    def update_labels(self, digest: str, labels: Mapping[str, str]) -> Info:
        """Merge ``labels`` into the blob's labels; an empty value removes that label.

        Read-modify-write happens in one LMDB write transaction so that two processes
        labelling the same blob (two pulls sharing a layer) do not lose each other's labels.
        """
        key = validate(digest).encode()
        with self.db.begin(write=True) as txn:
            raw = txn.get(key, db=self.db.table(CONTENT_TABLE))
            if raw is None:
                raise NotFound(f"content {digest} not found")
            info = Info.from_json(digest, _loads(raw))
            merged = {**info.labels, **labels}
            merged = {k: v for k, v in merged.items() if v}
            info = Info(digest, info.size, info.created, time.time(), merged)
            txn.put(key, dumps(info.to_json()), db=self.db.table(CONTENT_TABLE))
        return info

    def delete(self, digest: str) -> None:
        """Forget a blob and remove its file (NotFound if it is not committed)."""
        if not self.db.delete(CONTENT_TABLE, validate(digest)):
            raise NotFound(f"content {digest} not found")
        self.path(digest).unlink(missing_ok=True)

    def record(self, digest: str, size: int, labels: Mapping[str, str]) -> Info:
        """Index a blob whose verified file is already in place (the writer's last step)."""
        now = time.time()
        info = Info(digest, size, now, now, {k: v for k, v in labels.items() if v})
        self.db.put_json(CONTENT_TABLE, digest, info.to_json())
        return info

    # -- ingestion -------------------------------------------------------------------------

    def writer(self, ref: str, expected: Descriptor) -> Writer:
        """Open (or resume) the ingest ``ref`` for the blob ``expected``.

        Raises Busy when another writer (in this or another process) holds ``ref``; the
        caller may wait and retry, or check whether the other writer committed the blob.
        """
        from fsnap.content.writer import Writer

        return Writer.open(self, ref, expected)

    def ingest_dir(self, ref: str) -> Path:
        """The directory holding ``ref``'s partial data (named by a hash: refs are free text)."""
        return self.ingest_root / hashlib.sha256(ref.encode()).hexdigest()

    def lock_path(self, ref: str) -> Path:
        """The lock file of ``ref``. It is never deleted: unlinking a lock file others may be
        waiting on would let two writers each lock a different inode."""
        return self.ingest_root / (hashlib.sha256(ref.encode()).hexdigest() + ".lock")

    def status(self, ref: str) -> IngestStatus:
        data = self.db.get_json(INGEST_TABLE, ref)
        if data is None:
            raise NotFound(f"ingest {ref!r} not found")
        return self._status(ref, data)

    def list_ingests(self) -> list[IngestStatus]:
        return [self._status(ref, data) for ref, data in self.db.items_json(INGEST_TABLE)]

    def abort(self, ref: str) -> None:
        """Drop an ingest and its partial data (Busy if a writer holds it right now)."""
        writer = self.writer(ref, Descriptor.from_json(self._ingest_expected(ref)))
        writer.discard()

    def _ingest_expected(self, ref: str) -> dict[str, Any]:
        data = self.db.get_json(INGEST_TABLE, ref)
        if data is None:
            raise NotFound(f"ingest {ref!r} not found")
        expected: dict[str, Any] = data["expected"]
        return expected

    def _status(self, ref: str, data: dict[str, Any]) -> IngestStatus:
        from fsnap.content.writer import IngestStatus

        data_file = self.ingest_dir(ref) / "data"
        try:
            offset = data_file.stat().st_size
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

    def remove_ingest_dir(self, ref: str) -> None:
        with contextlib.suppress(OSError):
            remove_tree(self.ingest_dir(ref))


def _loads(raw: bytes | memoryview) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(bytes(raw))
    return value


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
