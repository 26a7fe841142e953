"""The pull pipeline: resolve -> fetch (index -> manifests -> config + layers) -> commit ->
record the image. containerd's data flow, in trio.

Every blob goes through a content ``Writer`` (verified, atomic, resumable): a blob already
committed is not fetched again, and an ingest left by a killed pull resumes at its offset.
Blobs download concurrently, at most ``max_concurrent_downloads`` at a time; hashing, disk
writes and fsync run in worker threads so the loop stays responsive.

Unpack-while-downloading hook: pass a ``LayerSink``. For each manifest it first receives
``manifest_ready(manifest, config)`` (the layer order and diff IDs, before any layer
starts), then for every distinct layer blob ``layer_started(desc)``; if that returns True
it receives every byte of the *compressed* blob, from offset 0 and in order, through
``feed(desc, chunk)`` (bytes already on disk from the store or an earlier ingest are
replayed first), then ``layer_done(desc)`` once the blob's digest has verified and it is
committed. If the layer fails, ``layer_failed(desc)`` is called instead and the pull
raises. Different layers' calls may interleave; a layer repeated in a manifest, or shared
by two platforms, is streamed once. ``feed`` is awaited: a slow sink slows its download.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol, cast

import trio

from fsnap import oci
from fsnap.content.api import Writer
from fsnap.content.store import ContentStore
from fsnap.errors import (
    AlreadyExists,
    Busy,
    FsnapError,
    InvalidArgument,
    Unavailable,
    first_fsnap_error,
)
from fsnap.images.manifest import (
    ImageConfig,
    Manifest,
    index_labels,
    kind_of,
    load_document,
    manifest_labels,
    parse_config,
    parse_index,
    parse_manifest,
    select_manifests,
)
from fsnap.images.store import Image, ImageStore
from fsnap.limits import BLOB_DEADLINE
from fsnap.oci import Descriptor, Platform
from fsnap.progress import PullProgress
from fsnap.reference import Reference
from fsnap.remotes.auth import Credentials
from fsnap.remotes.registry import RegistryClient
from fsnap.remotes.retry import RetryEvent

log = logging.getLogger("fsnap.pull")

# Chunks from the network are gathered to this size before a worker thread writes them.
WRITE_BATCH = 1 << 20
# How often a pull blocked on another process's ingest of the same blob looks again.
BUSY_POLL = 0.2
# Indexes within indexes: real images have one level (an index of manifests), containerd
# accepts a few; a chain of 1,000 took 50 s to refuse by exhaustion. Beyond this: refused.
MAX_INDEX_DEPTH = 4


class LayerSink(Protocol):
    """Receives layers as they download (see the module docstring for the contract)."""

    async def manifest_ready(self, manifest: Manifest, config: ImageConfig) -> None: ...

    async def layer_started(self, desc: Descriptor) -> bool: ...

    async def feed(self, desc: Descriptor, chunk: bytes) -> None: ...

    async def layer_done(self, desc: Descriptor) -> None: ...

    async def layer_failed(self, desc: Descriptor) -> None: ...


@dataclass
class PullOptions:
    """What to pull: ``platform`` None with ``all_platforms`` False means the host's."""

    platform: Platform | None = None
    all_platforms: bool = False
    max_concurrent_downloads: int = 3
    blob_deadline: float = BLOB_DEADLINE
    # Layer blobs not to download (a lazy pull's seekable layers: fsnap.lazy.pull).
    skip_layer: Callable[[Descriptor], bool] | None = None

    def wanted_platform(self) -> Platform | None:
        if self.all_platforms:
            return None
        return self.platform or Platform.host()


@dataclass
class _Tally:
    """Bytes seen by one pull: every distinct blob (image size) and those fetched now."""

    sizes: dict[str, int] = field(default_factory=dict)
    downloaded: int = 0
    platforms: list[Platform] = field(default_factory=list)


class Puller:
    """One pull of one reference. Use ``pull_image``; this class holds its shared state."""

    def __init__(
        self,
        content: ContentStore,
        registry: RegistryClient,
        ref: Reference,
        options: PullOptions,
        progress: PullProgress,
        sink: LayerSink | None,
    ) -> None:
        self.content = content
        self.registry = registry
        self.ref = ref
        self.options = options
        self.progress = progress
        self.sink = sink
        self.limiter = trio.CapacityLimiter(max(1, options.max_concurrent_downloads))
        self.tally = _Tally()
        self._blobs: dict[str, trio.Event] = {}
        self._downloading: dict[str, Descriptor] = {}  # blobs on the wire: retries name them
        # Documents fetched but not yet committed: they are committed once their children
        # are known, so that their gc labels go in with them.
        self._pending_documents: dict[str, bytes] = {}

    async def run(self) -> Descriptor:
        self.progress.resolving(str(self.ref))
        target = await self.registry.resolve(self.ref)
        self.progress.resolved(str(self.ref), target)
        await self.handle(target)
        return target

    async def handle(self, desc: Descriptor, depth: int = 0) -> None:
        """Fetch an index or manifest and, below it, everything the options select."""
        doc = load_document(desc, await self.document(desc))
        if kind_of(desc, doc) == "index":
            if depth >= MAX_INDEX_DEPTH:
                raise InvalidArgument(
                    f"{desc.digest}: indexes nested more than {MAX_INDEX_DEPTH} deep"
                )
            index = parse_index(desc, doc)
            children = select_manifests(index, self.options.wanted_platform(), ref=str(self.ref))
            await self.store_document(desc, index_labels(index, children))
            async with trio.open_nursery() as nursery:
                for child in children:
                    nursery.start_soon(self.handle, child, depth + 1)
        else:
            await self.handle_manifest(parse_manifest(desc, doc))

    async def handle_manifest(self, manifest: Manifest) -> None:
        if manifest.config.size > oci.MAX_MANIFEST_SIZE:  # refused before any byte comes
            raise InvalidArgument(
                f"{manifest.config.digest}: config of {manifest.config.size} bytes is over "
                f"the {oci.MAX_MANIFEST_SIZE}-byte limit"
            )
        for layer in manifest.layers:
            self.progress.blob_waiting(layer)
        # The manifest's commit (its file and directory flushed, two LMDB transactions)
        # runs while its config downloads: ~25 ms of a cold pull's start at load 5
        # (docs/benchmarks.md, "The first request of a cold pull"). The pull's lease keeps
        # whichever is committed first until the image record holds both.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.store_document, manifest.descriptor, manifest_labels(manifest))
            await self.fetch_blob(manifest.config, stream=False)
        config_bytes = await trio.to_thread.run_sync(self.content.read, manifest.config.digest)
        config = parse_config(manifest.config, config_bytes)
        if len(config.diff_ids) != len(manifest.layers):
            raise InvalidArgument(
                f"manifest {manifest.descriptor.digest}: {len(manifest.layers)} layers but "
                f"its config lists {len(config.diff_ids)} diff_ids"
            )
        platform = manifest.descriptor.platform or config.platform
        self.tally.platforms.append(platform)
        self._say_foreign(platform)
        if self.sink is not None:
            await self.sink.manifest_ready(manifest, config)
        skip = self.options.skip_layer
        async with trio.open_nursery() as nursery:
            for layer in _biggest_first(manifest.layers):
                if skip is not None and skip(layer):
                    self.tally.sizes[layer.digest] = layer.size
                    self.progress.blob_done(layer, "lazy")  # its TOC is what is fetched
                    continue
                # One at a time until each holds its download slot (or needs none): the
                # slots, and so the sink's appliers, go biggest layer first.
                await nursery.start(self.fetch_blob, layer)

    def _say_foreign(self, platform: Platform) -> None:
        """A manifest for another platform than the one wanted is pulled as it is (an index
        chose it, or there was nothing to choose from), with a warning, as podman does."""
        wanted = self.options.wanted_platform()
        if wanted is None or not (platform.os and platform.architecture):
            return
        if not wanted.matches(platform):
            log.warning("%s: the image is for %s, not %s", self.ref, platform, wanted)

    # -- documents (index, manifest) -------------------------------------------------------

    async def document(self, desc: Descriptor) -> bytes:
        """The bytes of an index or manifest: from the store if committed, else the registry."""
        self.tally.sizes[desc.digest] = desc.size
        if self.content.exists(desc.digest):
            return await trio.to_thread.run_sync(self.content.read, desc.digest)
        self.progress.blob_started(desc, 0)
        data = await self.registry.fetch_manifest(self.ref, desc)
        self._pending_documents[desc.digest] = data
        self.tally.downloaded += len(data)
        return data

    async def store_document(self, desc: Descriptor, labels: dict[str, str]) -> None:
        """Commit a fetched document with its gc labels (or label the committed one)."""
        data = self._pending_documents.pop(desc.digest, None)
        if data is None:
            await trio.to_thread.run_sync(self.content.update_labels, desc.digest, labels)
            self.progress.blob_done(desc, "exists")
            return
        writer = await self.open_writer(desc)
        if writer is None:
            await trio.to_thread.run_sync(self.content.update_labels, desc.digest, labels)
        else:
            await trio.to_thread.run_sync(_write_and_commit, writer, data, labels)
        self.progress.blob_done(desc, "done")

    # -- blobs (config, layers) ------------------------------------------------------------

    async def fetch_blob(
        self,
        desc: Descriptor,
        stream: bool = True,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Make ``desc`` committed in the store, once per pull however often it is named.

        ``task_status`` is told once the blob holds its download slot, or waits for
        anything else than a slot (another task's or process's download of the same blob),
        or needs no download: what ``handle_manifest`` waits for before the next layer."""
        turn = _Turn(task_status)
        event = self._blobs.get(desc.digest)
        if event is not None:
            turn.give()
            await event.wait()
            return
        self._blobs[desc.digest] = event = trio.Event()
        self.tally.sizes[desc.digest] = desc.size
        wants = stream and self.sink is not None and await self.sink.layer_started(desc)
        try:
            await self._fetch(desc, wants, turn)
        except BaseException as exc:
            if isinstance(exc, FsnapError):
                self.progress.blob_failed(desc, str(exc))
            if wants and self.sink is not None:
                with trio.CancelScope(shield=True):
                    await self.sink.layer_failed(desc)
            raise
        if wants and self.sink is not None:
            await self.sink.layer_done(desc)
        event.set()
        turn.give()

    async def _fetch(self, desc: Descriptor, wants: bool, turn: _Turn) -> None:
        self.progress.blob_waiting(desc)
        writer = await self.open_writer(desc, turn)
        if writer is None:
            turn.give()
            if wants:
                opener = functools.partial(self.content.open, desc.digest)
                await self.replay(desc, opener, desc.size)
            self.progress.blob_done(desc, "exists")
            return
        try:
            async with self.limiter:
                turn.give()
                self.progress.blob_started(desc, writer.offset)
                if wants:
                    await self.replay(desc, writer.open_written, writer.offset)
                self._downloading[desc.digest] = desc
                await self.download(desc, writer, wants)
                self.progress.blob_verifying(desc)
                with contextlib.suppress(AlreadyExists):  # another pull won: fine
                    await trio.to_thread.run_sync(writer.commit, None)
        finally:
            self._downloading.pop(desc.digest, None)
            writer.close()
        self.progress.blob_done(desc, "done")

    def retried(self, event: RetryEvent) -> None:
        """The registry client retries: tell the progress which blob waits (its digest is
        in the operation's name; retries of other requests are logged only)."""
        for digest, desc in self._downloading.items():
            if digest in event.what:
                self.progress.blob_retrying(desc, event.reason, event.delay)
                return

    async def download(self, desc: Descriptor, writer: Writer, wants: bool) -> None:
        """Append the rest of the blob from the registry, batching writes into threads."""
        if writer.offset >= desc.size:
            return
        deadline = self.options.blob_deadline
        try:
            with trio.fail_after(deadline):
                await self._download(desc, writer, wants)
        except trio.TooSlowError:
            raise Unavailable(
                f"blob {desc.digest} did not arrive within {deadline:g} s "
                f"({writer.offset} of {desc.size} bytes; see --blob-timeout)"
            ) from None

    async def _download(self, desc: Descriptor, writer: Writer, wants: bool) -> None:
        # Chunks (64 KiB from the socket) are kept in a list and joined once per batch: a
        # growing bytearray reallocates and copies as it grows, then copies again into bytes.
        batch: list[bytes] = []
        batched = 0
        # fetch_blob is an async generator; its declared type only promises iteration.
        stream = cast(
            "AsyncGenerator[bytes, None]", self.registry.fetch_blob(self.ref, desc, writer.offset)
        )
        async with contextlib.aclosing(stream) as chunks:  # closes the HTTP stream on error
            async for chunk in chunks:
                batch.append(chunk)
                batched += len(chunk)
                if batched >= WRITE_BATCH:
                    await self._flush(desc, writer, batch, wants)
                    batched = 0
        await self._flush(desc, writer, batch, wants)

    async def _flush(
        self, desc: Descriptor, writer: Writer, batch: list[bytes], wants: bool
    ) -> None:
        if not batch:
            return
        data = b"".join(batch)
        batch.clear()
        self.tally.downloaded += len(data)
        await trio.to_thread.run_sync(writer.write, data)
        self.progress.blob_advanced(desc, writer.offset)
        if wants and self.sink is not None:
            await self.sink.feed(desc, data)

    async def replay(self, desc: Descriptor, opener: Callable[[], IO[bytes]], length: int) -> None:
        """Feed the sink the first ``length`` bytes of what ``opener`` opens: a committed
        blob, or the part of an ingest written before this pull resumed it."""
        assert self.sink is not None
        with await trio.to_thread.run_sync(opener) as handle:
            remaining = length
            while remaining > 0:
                chunk = await trio.to_thread.run_sync(handle.read, min(WRITE_BATCH, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                await self.sink.feed(desc, chunk)

    async def open_writer(self, desc: Descriptor, turn: _Turn | None = None) -> Writer | None:
        """A writer for ``desc``, or None once the blob is committed (by us or another pull).

        Another process ingesting the same blob makes the writer Busy; we wait for it to
        commit (or give up, in which case we resume its partial data ourselves), giving
        up our ``turn`` meanwhile.
        """
        while True:
            if self.content.exists(desc.digest):
                return None
            try:
                writer = await trio.to_thread.run_sync(self.content.writer, desc.digest, desc)
            except Busy:
                if turn is not None:
                    turn.give()
                await trio.sleep(BUSY_POLL)
                continue
            if not self.content.exists(desc.digest):
                return writer
            # The holder committed between our check and our lock: nothing left to do.
            writer.discard()
            return None


class _Turn:
    """A task's ``task_status``, told at most once (``give`` may be called again)."""

    def __init__(self, status: trio.TaskStatus[None]) -> None:
        self._status: trio.TaskStatus[None] | None = status

    def give(self) -> None:
        if self._status is not None:
            status, self._status = self._status, None
            status.started()


def _biggest_first(layers: tuple[Descriptor, ...]) -> list[Descriptor]:
    """The order layers take download slots: biggest blob first (ties: manifest order).

    An unpacking pull applies a layer as it downloads, two at a time: the biggest layer's
    apply is the longest, so it must start first, not behind smaller ones. Measured on the
    bench-pull image (49, 20, 8 and 76 MB, in that order; see docs/benchmarks.md)."""
    return sorted(layers, key=lambda layer: -layer.size)


def _write_and_commit(writer: Writer, data: bytes, labels: dict[str, str]) -> None:
    try:
        writer.write(data)
        writer.commit(labels)
    except AlreadyExists:
        pass
    finally:
        writer.close()


async def pull_image(
    content: ContentStore,
    images: ImageStore,
    ref: str | Reference,
    *,
    platform: Platform | None = None,
    all_platforms: bool = False,
    plain_http: bool | None = None,
    credentials: Credentials | None = None,
    max_concurrent_downloads: int = 3,
    progress: PullProgress | None = None,
    sink: LayerSink | None = None,
    registry_factory: Callable[..., RegistryClient] = RegistryClient,
    ca_file: Path | None = None,
    record: bool = True,
    blob_deadline: float = BLOB_DEADLINE,
    skip_layer: Callable[[Descriptor], bool] | None = None,
) -> Image:
    """Pull ``ref`` into ``content`` and record it in ``images``; return the record.

    The record is written only once every blob the image needs is committed and
    verified: a failed pull leaves no image behind (nothing to inspect or push). With
    ``record=False`` the image is returned unrecorded, for a caller with more to finish
    first (an unpack: ``Client.pull`` records it once every layer is a snapshot)."""
    reference = ref if isinstance(ref, Reference) else Reference.parse(ref)
    progress = progress or PullProgress()
    options = PullOptions(
        platform, all_platforms, max_concurrent_downloads, blob_deadline, skip_layer
    )
    started = time.monotonic()
    async with registry_factory(
        plain_http=plain_http, credentials=credentials, ca_file=ca_file
    ) as registry:
        puller = Puller(content, registry, reference, options, progress, sink)
        registry.on_retry = puller.retried
        try:
            target = await puller.run()
        except BaseExceptionGroup as group:
            raise first_fsnap_error(group) from None
    image = Image(
        name=str(reference),
        target=target,
        platforms=tuple(dict.fromkeys(puller.tally.platforms)),
        size=sum(puller.tally.sizes.values()),
    )
    if record:
        image = await trio.to_thread.run_sync(images.create_or_update, image)
    progress.finished(puller.tally.downloaded, time.monotonic() - started)
    return image
