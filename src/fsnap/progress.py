"""What pull, push and commit report while they run: the observers their pipelines call.

The library never prints. ``fsnap.pull`` / ``fsnap.unpack`` report every state change of
every blob to a ``PullProgress``, ``fsnap.push`` to a ``PushProgress``, ``fsnap.diff.commit``
to a ``CommitProgress``; every method of these does nothing, so a caller overrides what it
needs. ``fsnap.cli.progress`` draws them (a live table on a terminal, plain lines
otherwise).

Contract: pull and push observers are called on the trio loop, commit's in the committing
thread; all must return quickly. Bytes that grow inside a worker thread (applied while
unpacking, written while committing) are not reported byte by byte: the observer receives
a ``Meter`` it may read whenever it draws, from any thread.
"""

from __future__ import annotations

from typing import Literal, Protocol

from fsnap import oci
from fsnap.oci import Descriptor

PushState = Literal["waiting", "uploading", "exists", "mounted", "pushed"]


class Meter(Protocol):
    """A byte count that grows in another thread; reading it is always safe (an int)."""

    @property
    def count(self) -> int: ...


class ByteMeter:
    """Counts the bytes read through the readers it wraps (by the one thread that reads)."""

    def __init__(self) -> None:
        self.count = 0

    def wrap(self, raw: Readable) -> Readable:
        return _Counted(raw, self)


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class _Counted:
    def __init__(self, raw: Readable, meter: ByteMeter) -> None:
        self._raw = raw
        self._meter = meter

    def read(self, n: int = -1, /) -> bytes:
        data = self._raw.read(n)
        self._meter.count += len(data)
        return data


class PullProgress:
    """What a pull reports. Subclass and override what you need; every default is a no-op."""

    def resolving(self, ref: str) -> None:
        """Resolution of ``ref`` on its registry has begun."""

    def resolved(self, ref: str, desc: Descriptor) -> None:
        """``ref`` names ``desc``."""

    def blob_waiting(self, desc: Descriptor) -> None:
        """The blob is known and queued (for a download slot, or for another writer)."""

    def blob_started(self, desc: Descriptor, offset: int) -> None:
        """Downloading began at ``offset`` (non-zero: an earlier, interrupted ingest resumes)."""

    def blob_advanced(self, desc: Descriptor, offset: int) -> None:
        """``offset`` bytes of the blob are written."""

    def blob_retrying(self, desc: Descriptor, reason: str, delay: float) -> None:
        """A transient failure (``reason``: "503 Service Unavailable", a dropped
        connection); the next try, from the bytes already written, is in ``delay`` s."""

    def blob_verifying(self, desc: Descriptor) -> None:
        """Every byte is written; its digest is being checked and the blob committed."""

    def blob_done(self, desc: Descriptor, state: Literal["done", "exists", "lazy"]) -> None:
        """The blob is committed: fetched now (``done``) or found in the store (``exists``);
        or, a seekable layer of a lazy pull, left in the registry (``lazy``: only its table
        of contents was fetched, its files come when read)."""

    def blob_failed(self, desc: Descriptor, reason: str) -> None:
        """The blob (its download, or its layer's unpacking) failed; the pull will raise."""

    def layer_unpacking(self, desc: Descriptor, applied: Meter) -> None:
        """The layer is being applied (while it downloads, or from the store);
        ``applied.count`` is how many of its ``desc.size`` compressed bytes are applied."""

    def layer_verifying(self, desc: Descriptor) -> None:
        """Applied and its diff ID checked; flushing and committing the snapshot."""

    def layer_unpacked(self, desc: Descriptor, chain_id: str) -> None:
        """The layer is committed as snapshot ``chain_id``."""

    def finished(self, downloaded: int, elapsed: float) -> None:
        """The pull succeeded; ``downloaded`` bytes came over the network in ``elapsed`` s."""


class PushProgress:
    """What a push reports; every default is a no-op."""

    def blob_state(self, desc: Descriptor, state: PushState) -> None:
        """A blob was queued, started uploading, or ended in one of the final states."""

    def blob_advanced(self, desc: Descriptor, offset: int) -> None:
        """``offset`` bytes of the blob are uploaded (the registry accepted them)."""

    def blob_retrying(self, desc: Descriptor, reason: str, delay: float) -> None:
        """A transient failure; the blob's upload starts again in ``delay`` s."""

    def manifest_pushed(self, desc: Descriptor, reference: str) -> None:
        """A manifest or index is in the registry under ``reference``."""

    def finished(self, pushed: int, elapsed: float) -> None:
        """Done: ``pushed`` bytes of blobs went over the network."""


class CommitProgress:
    """What ``commit_image`` reports; every default is a no-op."""

    def scanned(self, entries: int, data_bytes: int) -> None:
        """The snapshot's changes are known: ``entries`` paths, ``data_bytes`` of file data."""

    def layer_writing(self, written: Meter, estimate: int) -> None:
        """The layer tar is being written and compressed; ``written.count`` uncompressed
        bytes so far, about ``estimate`` in all (file data plus tar headers)."""

    def blob_done(self, desc: Descriptor, state: Literal["done", "exists"]) -> None:
        """A blob (the layer, the config, the manifest) is committed in the store."""

    def layer_unpacking(self, desc: Descriptor, applied: Meter) -> None:
        """The new layer is applied as a snapshot, so the new image mounts at once."""

    def layer_unpacked(self, desc: Descriptor, chain_id: str) -> None:
        """The new layer is the committed snapshot ``chain_id``."""

    def finished(self, written: int, elapsed: float) -> None:
        """Done: ``written`` bytes of new blobs in ``elapsed`` s."""


def blob_kind(media_type: str) -> str:
    """``layer``, ``config``, ``manifest``, ``index`` or ``blob``: what a line is about."""
    if media_type in oci.INDEX_TYPES:
        return "index"
    if media_type in oci.MANIFEST_TYPES:
        return "manifest"
    if media_type in oci.CONFIG_TYPES:
        return "config"
    if media_type in oci.LAYER_TYPES:
        return "layer"
    return "blob"


def blob_label(desc: Descriptor) -> str:
    """``layer-sha256:…`` etc., as ``ctr pull`` names its lines."""
    return f"{blob_kind(desc.media_type)}-{desc.digest}"


def human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    raise AssertionError("unreachable")
