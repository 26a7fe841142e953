"""The LMDB-backed content store: committed blobs plus their ingests, both roles of
``fsnap.content.api`` (``Provider`` and ``Ingester``) in one object.

Committed blobs are files under ``<root>/blobs/<alg>/<hex>`` plus an LMDB record each. The
file is the content; the LMDB record (table ``content``: digest -> size, created, updated,
labels) is what makes it *committed*. A writer renames a verified file into place first
and writes the record second (``_publish``), so a record never names a missing or
unverified blob; a file without a record (a crash between the two steps) is simply
replaced by the next commit. Labels carry containerd's gc references
(``containerd.io/gc.ref.content.*``) so a collector can walk image -> manifest -> config
and layers. Ingests in progress live under ``<root>/ingest`` (``fsnap.content.ingest``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from fsnap.content.api import Info, IngestStatus, Writer
from fsnap.content.ingest import Ingests
from fsnap.content.writer import IngestWriter
from fsnap.db import Database, dumps
from fsnap.digest import validate
from fsnap.errors import AlreadyExists, NotFound
from fsnap.oci import Descriptor

CONTENT_TABLE = "content"


class ContentStore:
    """Blobs by digest, a ``Provider`` and an ``Ingester`` (``fsnap.content.api``: the
    contract). Safe to share between processes (LMDB + per-ingest file locks)."""

    def __init__(self, root: Path, db: Database) -> None:
        self.root = Path(root)
        self.db = db
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self.ingests = Ingests(self.root / "ingest", db)

    # -- committed blobs -------------------------------------------------------------------

    def path(self, digest: str) -> Path:
        """Where the blob named ``digest`` lives (whether or not it exists): for what needs
        the file itself (uploads that seek, copies by sendfile, fsck); readers use ``open``."""
        algorithm, hexpart = validate(digest).split(":")  # validate admits one ":"
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

    def read_held(self, digest: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the blob ``digest`` as far as this store holds them:
        all from the committed blob, else what its ingest (named by the digest, as a pull
        names it) has written so far, which may be fewer bytes (or none). Never an error
        for what is not here, nor for a writer appending, resuming or committing
        meanwhile (``Ingests.read_written``). An ingest's bytes are unverified: a caller
        checks what it uses against digests of its own (a lazy read's chunk digests)."""
        if end <= start:
            return b""
        if self.exists(digest):  # verified bytes first
            try:
                with self.open(digest) as handle:
                    return os.pread(handle.fileno(), end - start, start)
            except (NotFound, OSError):
                pass  # indexed, but its file is damaged: what an ingest may hold
        return self.ingests.read_written(digest, start, end)

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

    def _publish(self, data: Path, desc: Descriptor, labels: Mapping[str, str]) -> Info:
        """A writer's last step: its verified, flushed ``data`` file becomes the blob, made
        read-only and moved into place (durably) before its record is written."""
        if self.exists(desc.digest):
            raise AlreadyExists(f"content {desc.digest} already exists")
        target = self.path(desc.digest)
        target.parent.mkdir(exist_ok=True)  # in blobs/, made by __init__
        os.chmod(data, 0o444)
        os.replace(data, target)
        fsync_dir(target.parent)
        now = time.time()
        info = Info(desc.digest, desc.size, now, now, {k: v for k, v in labels.items() if v})
        self.db.put_json(CONTENT_TABLE, desc.digest, info.to_json())
        return info

    # -- ingestion (the Ingester role; the state is ``self.ingests``) -----------------------

    def writer(self, ref: str, expected: Descriptor) -> Writer:
        """Open (or resume) the ingest ``ref`` for the blob ``expected``.

        Raises Busy when another writer (in this or another process) holds ``ref``; the
        caller may wait and retry, or check whether the other writer committed the blob.
        """
        return IngestWriter.open(self.ingests, self._publish, ref, expected)

    def status(self, ref: str) -> IngestStatus:
        return self.ingests.status(ref)

    def list_ingests(self) -> list[IngestStatus]:
        return self.ingests.statuses()

    def abort(self, ref: str) -> None:
        """Drop an ingest and its partial data (Busy if a writer holds it right now)."""
        self.writer(ref, self.ingests.expected(ref)).discard()


def _loads(raw: bytes | memoryview) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(bytes(raw))
    return value


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_DIRECTORY)  # read-only: O_RDONLY is 0
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
