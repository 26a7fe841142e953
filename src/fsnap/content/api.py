"""The content store's two roles, as containerd's ``content.go`` splits them.

A ``Provider`` hands out committed blobs by digest; an ``Ingester`` turns bytes into them
through a ``Writer``. Code that only reads blobs (inspect, export, the unpacker) asks for a
``Provider``; code that writes them (pull, commit, import) for an ``Ingester``. The
docstrings here are the contract: ``fsnap.content.store.ContentStore`` (files + LMDB)
implements both, and any other store (a remote or lazy one) must keep the same promises.

Every call is blocking (disk, hashing, LMDB): async callers run them in worker threads.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import IO, Any, Protocol

from fsnap.oci import Descriptor


@dataclass(frozen=True)
class Info:
    """What the store knows about one committed blob (times are seconds since the epoch).

    A snapshot of the record: callers may share it, and it never changes in place."""

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


@dataclass(frozen=True)
class IngestStatus:
    """Progress of one ingest: ``offset`` bytes of ``total`` are written, towards the blob
    ``expected`` (a digest); ``started`` and ``updated`` are seconds since the epoch."""

    ref: str
    offset: int
    total: int
    expected: str
    started: float
    updated: float


class Provider(Protocol):
    """Committed blobs by digest: what readers of the store need.

    A blob is *committed* once its bytes were verified against its digest and size; from
    then on it never changes (a digest names one content) until it is deleted. Only
    committed blobs are visible here: an ingest in progress never is. Every method raises
    ``InvalidArgument`` for a malformed digest."""

    def info(self, digest: str) -> Info:
        """The blob's size, times and labels; ``NotFound`` if it is not committed."""
        ...

    def exists(self, digest: str) -> bool:
        """Whether the blob is committed (``info`` without the error)."""
        ...

    def open(self, digest: str) -> IO[bytes]:
        """The committed blob, opened for reading from its start; the caller closes it.

        ``NotFound`` if it is not committed, or if its bytes have gone missing behind the
        store's back (named as such, never a bare ``FileNotFoundError``)."""
        ...

    def read(self, digest: str) -> bytes:
        """The whole blob in memory, for small documents (indexes, manifests, configs)
        whose size the caller has bounded already; large blobs go through ``open``."""
        ...

    def walk(self) -> Iterator[Info]:
        """Every committed blob, in digest order. A blob committed or deleted while the
        walk runs may or may not be seen."""
        ...


class Writer(Protocol):
    """One ingest in progress: a resumable, verified write of one expected blob.

    Its ref is held exclusively from ``Ingester.writer`` until ``commit``, ``close`` or
    ``discard``; after any of them the writer is done. Use it as a context manager (exit
    closes it, which keeps what is written for a later resume)."""

    ref: str
    expected: Descriptor

    @property
    def offset(self) -> int:
        """Bytes written so far, including those found when the ingest resumed."""
        ...

    def write(self, data: bytes) -> None:
        """Append ``data``. More bytes than ``expected.size`` discard the ingest and raise
        ``DigestMismatch``: a registry cannot make the store hold more than it promised."""
        ...

    def open_written(self) -> IO[bytes]:
        """The ``offset`` bytes written so far, from the start, opened for reading: how a
        consumer that must see every byte of the blob catches up with a resumed ingest."""
        ...

    def commit(self, labels: Mapping[str, str] | None = None) -> Info:
        """Verify size and digest, then make the blob committed (atomically, read-only,
        durable) with ``labels``; the ingest is gone afterwards.

        A mismatch discards the ingest (a retry starts clean) and raises
        ``DigestMismatch`` naming the digest. A blob committed meanwhile by someone else
        discards ours and raises ``AlreadyExists``: for a puller, that is success."""
        ...

    def close(self) -> None:
        """Stop writing, keep the partial data and its status: the ref can resume later."""
        ...

    def discard(self) -> None:
        """Drop the partial data and the status, and release the ref."""
        ...

    def __enter__(self) -> Writer: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class Ingester(Protocol):
    """How bytes become committed blobs: writers by ref, and what is in progress.

    A *ref* is free text naming one ingest (the puller uses the blob's digest, so two
    pulls of one blob meet on one ref). Ingest state survives the process: a killed
    writer leaves its bytes and status, and the next writer of the same ref resumes them
    (re-hashing what is there, so the final check still covers every byte)."""

    def writer(self, ref: str, expected: Descriptor) -> Writer:
        """Open, or resume, the ingest ``ref`` of the blob ``expected``.

        Bytes left by an earlier writer of the same ref resume only if they were for the
        same blob; otherwise the ingest starts afresh. ``Busy`` at once (never blocking)
        while another writer, in this or another process, holds ``ref``: the caller may
        wait and retry, or see whether the other writer committed the blob."""
        ...

    def status(self, ref: str) -> IngestStatus:
        """Progress of the ingest ``ref``; ``NotFound`` if there is none."""
        ...

    def list_ingests(self) -> list[IngestStatus]:
        """Every ingest with a status, held by a writer or abandoned."""
        ...

    def abort(self, ref: str) -> None:
        """Drop the ingest ``ref`` and its partial data. ``NotFound`` if there is none;
        ``Busy`` while a writer holds it (an abort never pulls bytes from under one)."""
        ...
