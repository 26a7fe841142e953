"""``fsnap pull --lazy``: seekable layers become snapshots from their TOC alone.

``LazyLayers`` is handed to the pull (``skip``: which layer blobs not to download) and to
the unpacker (``build``: the layer's TOC fetched with Range requests, verified against its
annotation, laid out by ``fsnap.lazy.skeleton`` in a staging directory). The unpacker then
commits that directory under the layer's chain ID like any other layer, with the lazy
labels and, before the commit, the layer's ``lazy.json`` (``fsnap.lazy.state``). Layers
that are not seekable are downloaded and unpacked as always: mixed images work. So is a
seekable layer whose TOC lays out a tree its index cannot serve (``build`` raises
``fsnap.lazy.skeleton.NotLazy``): the unpacker hands it to ``pull_in_full`` before the
pull asks ``skip``, with one warning saying why.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import trio

from fsnap.archive.entry import Entry
from fsnap.labels import LAZY_LABEL, LAZY_REF_LABEL
from fsnap.lazy.state import LazyRecord, write_record
from fsnap.lazy.toc import Seekable, Toc, load_toc, seekable
from fsnap.oci import Descriptor
from fsnap.reference import Reference
from fsnap.remotes.auth import Credentials
from fsnap.remotes.registry import RegistryClient
from fsnap.unpack.limit import SizeLimit

log = logging.getLogger(__name__)


@dataclass
class Built:
    """A lazy layer laid out in its staging directory, ready to commit."""

    entries: list[Entry]
    record: LazyRecord

    @property
    def labels(self) -> dict[str, str]:
        return {LAZY_LABEL: self.record.descriptor.digest, LAZY_REF_LABEL: self.record.reference}

    def before_commit(self, state_dir: Path) -> None:
        write_record(state_dir, self.record)


async def fetch_range(
    registry: RegistryClient, ref: Reference, desc: Descriptor, start: int, end: int
) -> bytes:
    """The blob's bytes ``[start, end)``: one Range request (retried by the client)."""
    stream = cast("AsyncGenerator[bytes, None]", registry.fetch_blob(ref, desc, start, end))
    parts: list[bytes] = []
    async with contextlib.aclosing(stream) as chunks:
        async for chunk in chunks:
            parts.append(chunk)
    return b"".join(parts)


async def stream_range(
    registry: RegistryClient,
    ref: Reference,
    desc: Descriptor,
    start: int,
    end: int,
    write: Callable[[bytes], Awaitable[None]],
    batch_size: int,
) -> None:
    """The blob's bytes ``[start, end)`` handed to ``write`` in order, ``batch_size`` at a
    time. What arrived is written also when the request is cancelled (a read comes first,
    a pull ends) or fails: the next request starts after it, no byte crosses the link
    twice. ``write`` is then awaited shielded from cancellation."""
    stream = cast("AsyncGenerator[bytes, None]", registry.fetch_blob(ref, desc, start, end))
    batch: list[bytes] = []
    batched = 0
    try:
        async with contextlib.aclosing(stream) as chunks:
            async for chunk in chunks:
                batch.append(chunk)
                batched += len(chunk)
                if batched >= batch_size:
                    data, batch, batched = b"".join(batch), [], 0
                    await write(data)
    finally:
        if batch:
            with trio.CancelScope(shield=True):
                await write(b"".join(batch))


class LazyLayers:
    """The lazy side of one pull (``open_lazy`` makes one with its registry client)."""

    def __init__(
        self,
        ref: Reference,
        registry: RegistryClient,
        limit: SizeLimit,
        started: Callable[[Descriptor], None] | None = None,
    ) -> None:
        self.ref = ref
        self.registry = registry
        self.limit = limit
        self.started = started
        self.in_full: set[str] = set()  # seekable layers' digests pulled in full instead

    def skip(self, desc: Descriptor) -> bool:
        """Whether the pull leaves this blob to us (a seekable layer not ``pull_in_full``)."""
        return desc.digest not in self.in_full and self.seekable(desc) is not None

    def pull_in_full(self, desc: Descriptor, why: str) -> None:
        """From now on ``desc`` is no lazy layer: the pull downloads and unpacks it."""
        log.warning("layer %s is pulled in full, not lazily: %s", desc.digest, why)
        self.in_full.add(desc.digest)

    @staticmethod
    def seekable(desc: Descriptor) -> Seekable | None:
        return seekable(desc.media_type, desc.size, desc.annotations)

    async def build(self, desc: Descriptor, diff_id: str, staging: Path) -> Built | None:
        """Fetch and verify ``desc``'s TOC; lay its tree out in the empty ``staging``.
        ``diff_id`` (the config's) is kept to check the blob against once it is complete.
        None if its tree cannot be served lazily (``fsnap.lazy.skeleton.NotLazy``): the
        layer is then ``pull_in_full`` and ``staging`` holds part of its tree."""
        layer = self.seekable(desc)
        assert layer is not None
        if self.started is not None:  # fsnap.lazy.early: the blob's download begins now
            self.started(desc)

        async def fetch(start: int, end: int) -> bytes:
            return await fetch_range(self.registry, self.ref, desc, start, end)

        toc = await load_toc(layer, fetch, self.limit.for_blob(desc.size))
        entries = await trio.to_thread.run_sync(_lay_out, toc, staging)
        if isinstance(entries, str):
            self.pull_in_full(desc, entries)
            return None
        record = LazyRecord.of_toc(desc, str(self.ref), toc, diff_id)
        return Built(entries, record)


def _lay_out(toc: Toc, staging: Path) -> list[Entry] | str:
    """``fsnap.lazy.skeleton.build_skeleton``, imported here, in the worker thread: the
    layout code (``tarfile``, the tar applier, ISA-L) loads while the loop waits for the
    other TOCs, not before the pull's first request (docs/benchmarks.md, "The first request
    of a cold pull"; ``tests/test_pull_start.py``). A layout it refuses gives the reason."""
    from fsnap.lazy.skeleton import NotLazy, build_skeleton

    try:
        return build_skeleton(toc, staging)
    except NotLazy as exc:
        return str(exc)


@contextlib.asynccontextmanager
async def open_lazy(
    ref: str,
    plain_http: bool | None,
    credentials: Credentials | None,
    ca_file: Path | None,
    limit: SizeLimit | None,
    started: Callable[[Descriptor], None] | None = None,
) -> AsyncIterator[LazyLayers]:
    """The lazy side of a pull of ``ref`` (its own registry client, same options);
    ``started(desc)`` is told each lazy layer as its TOC is asked for."""
    client = RegistryClient(plain_http=plain_http, credentials=credentials, ca_file=ca_file)
    async with client as registry:
        yield LazyLayers(Reference.parse(ref), registry, limit or SizeLimit(), started)
