"""Unpacking an image's layers into snapshots named by chain ID, while the pull downloads.

containerd unpacks layer by layer: Stat(chain ID) -> Prepare(tmp key, parent) -> Apply ->
Commit(chain ID). fsnap keeps that contract but splits Apply from the rest, so that every
layer applies as its blob arrives (while the others download; in applier processes, two at
a time, see ``fsnap.unpack.worker``), into a staging directory of its own:

1. ``manifest_ready``: chain IDs from the config's diff IDs; a layer whose chain ID is a
   committed snapshot already is declined (``layer_started`` returns False): nothing is
   redone. Only manifests for the unpack platform are unpacked (the requested one, else the
   host's; with ``--all-platforms`` every manifest matching the host, as ``ctr`` does).
2. ``feed``: the blob's bytes go through a queue and a pipe (``FeedPipe``) to an applier that
   decompresses and applies them (``fsnap.unpack.blob.apply_blob``) and reports the
   layer's index back; the diff ID is checked as soon as the tar ends, so a bad layer
   fails the pull early. The index goes to LMDB from this process, at the commit.
3. One task per manifest commits bottom to top: when layer i is applied and layer i-1's
   chain is committed, the staged tree becomes snapshot ``chain[i]`` (``commit_staged``).
   A lazy layer (``fsnap.lazy.pull``: its TOC only) is built from the start, all of
   a plan's at once (``LAZY_BUILDS``), and committed in its turn. ``manifest_ready`` waits
   for those builds: a layer whose TOC cannot be served lazily is then claimed like a
   non-seekable one, before the pull decides which blobs to download.
4. A layer not streamed to us (its blob was already in the store and, e.g., another manifest
   declined it, or it repeats in the manifest) is applied from the stored blob.
5. ``finish``, once the pull has every blob: the layer blobs get
   ``containerd.io/uncompressed=<diff_id>``, the config ``containerd.io/gc.ref.snapshot.fsnap=
   <top chain ID>`` (what ``fsnap.mount.source`` reads).

Whatever fails, the temporary snapshot and staging directory go (see ``fsnap.unpack.staging``
for what a crash leaves and how the next pull removes it).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import trio

from fsnap.archive.result import ApplyResult
from fsnap.content.store import ContentStore
from fsnap.digest import chain_ids
from fsnap.errors import FailedPrecondition, FsnapError, first_fsnap_error
from fsnap.images.manifest import ImageConfig, Manifest
from fsnap.labels import SNAPSHOT_LABEL, UNCOMPRESSED_LABEL
from fsnap.oci import Descriptor, Platform
from fsnap.progress import ByteMeter, PullProgress
from fsnap.pull import LayerSink
from fsnap.snapshots.disk import remove_tree
from fsnap.snapshots.snapshotter import LocalSnapshotter
from fsnap.unpack.appliers import ApplierPool, FeedPipe
from fsnap.unpack.apply import commit_staged
from fsnap.unpack.limit import SizeLimit
from fsnap.unpack.staging import Session, clean_stale, open_session
from fsnap.unpack.worker import Job, make_pipe, processes_wanted

if TYPE_CHECKING:  # (fsnap.lazy is imported only when a layer is lazy: 7 modules)
    from fsnap.lazy.pull import Built, LazyLayers

# Layers apply in applier processes (``fsnap.unpack.worker``), at most ``PROCESSES`` at a
# time. In threads, two appliers mostly waited for each other on the GIL (2.61 -> 2.40 s
# with one, 6 rounds A/B). It cannot deadlock: a layer takes an applier only once its
# bytes flow, and then holds its download slot until its last byte.

# Lazy layers (``fsnap.lazy.pull``) are built ahead of their commits, this many at a time:
# each waits on round trips for its TOC, then on the disk for its layout, so the layers'
# waits overlap (bench image, 100 Mbit/s and 20 ms RTT: see docs/benchmarks.md).
LAZY_BUILDS = 4

T = TypeVar("T")


@dataclass
class _Applied:
    """A layer applied into ``staged``: its index and diff ID are in ``result``; a lazy
    layer (``lazy``) has only its TOC's tree there, and its records to commit with it."""

    staged: Path
    result: ApplyResult
    lazy: Built | None = None


@dataclass
class _Stream:
    """One layer blob applied in a worker thread as it downloads."""

    desc: Descriptor
    diff_id: str
    pipe: FeedPipe
    after: trio.Event | None = None  # the plan's previous stream asked for its applier
    asked: trio.Event = field(default_factory=trio.Event)  # this one did (or gave up)
    flowing: trio.Event = field(default_factory=trio.Event)  # first bytes, or the end
    settled: trio.Event = field(default_factory=trio.Event)  # the download ended
    download_failed: bool = False
    done: trio.Event = field(default_factory=trio.Event)
    applied: _Applied | None = None


@dataclass
class _Build:
    """A lazy layer's TOC fetched and its tree laid out, ahead of its commit."""

    done: trio.Event = field(default_factory=trio.Event)
    applied: _Applied | None = None  # None once done: the layer is pulled in full instead


@dataclass
class _Plan:
    """One manifest to unpack: its layers, their diff IDs and chain IDs, bottom first."""

    manifest: Manifest
    diff_ids: list[str]
    chain: list[str]
    streamed: dict[int, _Stream] = field(default_factory=dict)  # layer position -> stream
    last: _Stream | None = None  # the stream announced last
    built: dict[int, _Build] = field(default_factory=dict)  # layer position -> lazy build
    done: trio.Event = field(default_factory=trio.Event)


class Unpacker:
    """A ``LayerSink`` that unpacks what it is fed (``pull_unpacked`` makes one per pull)."""

    def __init__(
        self,
        snapshotter: LocalSnapshotter,
        content: ContentStore,
        session: Session,
        nursery: trio.Nursery,
        platform: Platform,
        progress: PullProgress,
        limit: SizeLimit | None = None,
        lazy: LazyLayers | None = None,
        appliers: ApplierPool | None = None,
    ) -> None:
        self.limit = limit or SizeLimit()
        self.appliers = appliers or ApplierPool(0)
        self.lazy = lazy
        self.snapshotter = snapshotter
        self.content = content
        self.session = session
        self.platform = platform
        self.progress = progress
        self._nursery = nursery
        self._plans: list[_Plan] = []
        self._claims: dict[str, tuple[_Plan, int]] = {}  # blob digest -> first position
        self._streams: dict[str, _Stream] = {}
        self._blob_ready: dict[str, trio.Event] = {}
        self._announced: dict[str, trio.Event] = {}  # layer_started took the blob's stream
        self._pull_done = trio.Event()
        self._lazy_builds = trio.CapacityLimiter(LAZY_BUILDS)

    # -- LayerSink -----------------------------------------------------------------------

    async def manifest_ready(self, manifest: Manifest, config: ImageConfig) -> None:
        platform = manifest.descriptor.platform or config.platform
        if not self.platform.matches(platform):
            return
        diff_ids = list(config.diff_ids)
        plan = _Plan(manifest, diff_ids, chain_ids(diff_ids))
        self._plans.append(plan)
        for i, desc in enumerate(manifest.layers):
            if self._is_lazy(desc) and not await self._reuse(plan.chain[i]):
                plan.built[i] = build = _Build()
                self._nursery.start_soon(self._build_lazy, build, desc, diff_ids[i])
        await self._lazy_settled(plan)
        for i, desc in enumerate(manifest.layers):
            if self._is_lazy(desc):
                continue
            if desc.digest not in self._claims and not await self._reuse(plan.chain[i]):
                self._claims[desc.digest] = (plan, i)
        self._nursery.start_soon(self._commit_chain, plan)

    async def _lazy_settled(self, plan: _Plan) -> None:
        """Wait for the plan's lazy builds. One that gave no layer (its TOC lays out a tree
        the lazy index cannot serve: ``LazyLayers.build``) leaves ``plan.built``; its layer
        is no longer lazy (``LazyLayers.skip``), so the pull, which asks only once this
        returns, downloads it and it unpacks as any other layer."""
        for index, build in list(plan.built.items()):
            await build.done.wait()
            if build.applied is None:
                del plan.built[index]

    async def layer_started(self, desc: Descriptor) -> bool:
        claim = self._claims.get(desc.digest)
        if claim is None or desc.digest in self._streams:
            return False
        plan, index = claim
        after = None if plan.last is None else plan.last.asked
        stream = _Stream(desc, plan.diff_ids[index], FeedPipe(ByteMeter()), after)
        self._streams[desc.digest] = plan.streamed[index] = plan.last = stream
        self._nursery.start_soon(self._apply_stream, stream)
        self._event(self._announced, desc.digest).set()
        return True

    async def feed(self, desc: Descriptor, chunk: bytes) -> None:
        stream = self._streams[desc.digest]
        stream.flowing.set()
        await stream.pipe.write(chunk)

    async def layer_done(self, desc: Descriptor) -> None:
        stream = self._streams[desc.digest]
        stream.pipe.close()
        stream.flowing.set()
        stream.settled.set()
        self._ready_event(desc.digest).set()

    async def layer_failed(self, desc: Descriptor) -> None:
        stream = self._streams[desc.digest]
        stream.download_failed = True  # before the applier sees the (truncated) end
        stream.pipe.close()
        stream.flowing.set()
        stream.settled.set()

    # -- after the pull --------------------------------------------------------------------

    async def finish(self) -> None:
        """Called once the pull has committed every blob: wait for the commits, then label
        the blobs (they all exist now, even those of layers that needed no unpacking)."""
        self._pull_done.set()
        for plan in self._plans:
            await plan.done.wait()
        await trio.to_thread.run_sync(self._label_all)

    def abort(self) -> None:
        """The pull failed: unblock every applier still waiting for bytes."""
        for stream in self._streams.values():
            stream.pipe.drop()

    # -- applying ---------------------------------------------------------------------------

    async def _apply_stream(self, stream: _Stream) -> None:
        """Apply a streamed layer in an applier once its bytes flow (an applier is only
        taken by a layer that is actually downloading, so none waits on another).

        A failure is reported only once the download has ended well: a corrupt download
        also breaks the tar, and then the pull's own error (the digest) is the true one;
        after a failed download even a result is discarded (the applier saw a truncated
        blob's end).

        Appliers go to a manifest's streams in the order the pull announced them (biggest
        first, see ``fsnap.pull``), not in the order their first bytes happen to come: a
        stream asks for one only after the one announced before it did. That one holds
        its download slot already (the pull announces the next layer only then), so its
        bytes need nothing but the network: waiting for it cannot deadlock."""
        try:
            await stream.flowing.wait()
            if stream.after is not None:
                await stream.after.wait()
            staged = await trio.to_thread.run_sync(self.session.staging_dir)
        finally:
            stream.asked.set()
        self.progress.layer_unpacking(stream.desc, stream.pipe.meter)
        read, write = make_pipe()
        self._nursery.start_soon(stream.pipe.pump, write)
        try:
            result = await self.appliers.apply(self._job(stream.desc, stream.diff_id, staged), read)
        except BaseException as exc:
            stream.pipe.drop()
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(remove_tree, staged)
            if not isinstance(exc, FsnapError):
                raise
            await stream.settled.wait()
            if stream.download_failed:
                return  # the pull raises its own error
            self.progress.blob_failed(stream.desc, _naming(stream.desc, exc))
            raise type(exc)(_naming(stream.desc, exc)) from None
        finally:
            os.close(read)
        if stream.download_failed:
            await trio.to_thread.run_sync(remove_tree, staged)
            return  # the pull raises its own error
        stream.applied = _Applied(staged, result)
        stream.done.set()

    def _job(self, desc: Descriptor, diff_id: str, staged: Path) -> Job:
        return Job.of(desc, diff_id, staged, self.limit)

    async def _apply_from_store(self, plan: _Plan, index: int) -> _Applied:
        desc = plan.manifest.layers[index]
        await self._wait_for_blob(desc.digest)
        staged = await trio.to_thread.run_sync(self.session.staging_dir)
        meter = ByteMeter()
        self.progress.layer_unpacking(desc, meter)
        job = self._job(desc, plan.diff_ids[index], staged)
        try:
            with await trio.to_thread.run_sync(self.content.open, desc.digest) as blob:
                result = await self.appliers.apply(job, blob.fileno())
        except FsnapError as exc:
            await trio.to_thread.run_sync(remove_tree, staged)
            self.progress.blob_failed(desc, _naming(desc, exc))
            raise type(exc)(_naming(desc, exc)) from None
        meter.count = desc.size
        return _Applied(staged, result)

    async def _complete_lazy(self, desc: Descriptor, chain_id: str) -> None:
        """A layer an earlier ``pull --lazy`` left lazy: once this pull has its blob, it
        becomes an ordinary snapshot (``fsnap.lazy.complete``; a bad diff_id fails)."""
        from fsnap.lazy.complete import complete_layer, is_lazy

        if not await trio.to_thread.run_sync(is_lazy, self.snapshotter, chain_id):
            return
        await self._wait_for_blob(desc.digest)
        self.progress.layer_verifying(desc)
        try:
            await trio.to_thread.run_sync(
                complete_layer, self.snapshotter, self.content, self.snapshotter.db, chain_id
            )
        except FsnapError as exc:
            self.progress.blob_failed(desc, _naming(desc, exc))
            raise type(exc)(_naming(desc, exc)) from None
        self.progress.layer_unpacked(desc, chain_id)

    def _is_lazy(self, desc: Descriptor) -> bool:
        return self.lazy is not None and self.lazy.skip(desc)

    async def _apply_lazy(self, desc: Descriptor, diff_id: str) -> _Applied | None:
        """A seekable layer from its TOC alone (``fsnap.lazy.pull``); None (nothing staged)
        if it cannot be lazy: it is to be pulled in full."""
        assert self.lazy is not None
        staged = await trio.to_thread.run_sync(self.session.staging_dir)
        # No ``layer_unpacking``: the pull says "lazy" once the builds settle, and a layer
        # that cannot be lazy is downloaded and unpacked, saying so, as any other.
        try:
            built = await self.lazy.build(desc, diff_id, staged)
        except FsnapError as exc:
            await trio.to_thread.run_sync(remove_tree, staged)
            self.progress.blob_failed(desc, _naming(desc, exc))
            raise type(exc)(_naming(desc, exc)) from None
        if built is None:
            await trio.to_thread.run_sync(remove_tree, staged)
            return None
        return _Applied(staged, ApplyResult("", built.entries, 0), built)

    async def _build_lazy(self, build: _Build, desc: Descriptor, diff_id: str) -> None:
        """``_apply_lazy``, started for every lazy layer of a plan at once (at most
        ``LAZY_BUILDS`` at a time): their TOC requests and layouts overlap instead of each
        waiting for the layer below to be committed."""
        async with self._lazy_builds:
            build.applied = await self._apply_lazy(desc, diff_id)
        build.done.set()

    async def _lazy_built(self, plan: _Plan, index: int) -> _Applied:
        """Layer ``index`` of ``plan``, a lazy one, built (by its ``_build_lazy``)."""
        build = plan.built.pop(index, None)
        if build is not None:
            await build.done.wait()
            assert build.applied is not None  # (``_lazy_settled`` dropped the others)
            return build.applied
        # Reused when the manifest came, its snapshot gone since (a gc): built only now.
        desc = plan.manifest.layers[index]
        applied = await self._apply_lazy(desc, plan.diff_ids[index])
        if applied is None:  # too late for this pull to download it
            raise FailedPrecondition(
                f"layer {desc.digest}: its snapshot was removed during the pull and the "
                "layer cannot be lazy; pull the image again"
            )
        return applied

    async def _wait_for_blob(self, digest: str) -> None:
        """Until the blob is committed: its own download finished, or the whole pull did."""
        await _first_of(self._ready_event(digest), self._pull_done)

    async def _stream_of(self, plan: _Plan, index: int) -> _Stream | None:
        """The stream that brings layer ``index``, if it comes as one.

        The pipeline announces a blob (``layer_started``) before it downloads it, possibly
        after this plan's commit task got here: a layer this plan claimed is waited for
        until it is announced, or the pull ends without announcing it (then it comes from
        the store). Deciding earlier would apply a streamed layer a second time."""
        digest = plan.manifest.layers[index].digest
        claim = self._claims.get(digest)
        if claim is not None and claim[0] is plan and claim[1] == index:
            await _first_of(self._event(self._announced, digest), self._pull_done)
        return plan.streamed.get(index)

    # -- committing -------------------------------------------------------------------------

    async def _commit_chain(self, plan: _Plan) -> None:
        """Commit the plan's layers bottom to top, each on its committed parent."""
        parent = ""
        for index, desc in enumerate(plan.manifest.layers):
            chain_id = plan.chain[index]
            stream = await self._stream_of(plan, index)
            if stream is not None:
                await stream.done.wait()
                assert stream.applied is not None
                applied = stream.applied
            elif await self._reuse(chain_id):
                if not self._is_lazy(desc):
                    await self._complete_lazy(desc, chain_id)
                elif index in plan.built:  # committed meanwhile (by another pull)
                    applied = await self._lazy_built(plan, index)
                    await trio.to_thread.run_sync(remove_tree, applied.staged)
                parent = chain_id
                continue
            elif self._is_lazy(desc):
                applied = await self._lazy_built(plan, index)
            else:
                applied = await self._apply_from_store(plan, index)
            await self._commit_one(applied, desc, chain_id, parent)
            parent = chain_id
        plan.done.set()

    async def _commit_one(
        self, applied: _Applied, desc: Descriptor, chain_id: str, parent: str
    ) -> None:
        self.progress.layer_verifying(desc)
        try:
            # Layers apply with sync=False: the flush happens here, outside the applier
            # slot, so the next layer applies meanwhile. It must come before the commit:
            # a committed snapshot's files are on disk.
            from fsnap.archive.apply import sync_tree  # (not before the first request)

            await trio.to_thread.run_sync(sync_tree, applied.staged)
            lazy = applied.lazy
            await trio.to_thread.run_sync(
                functools.partial(
                    commit_staged,
                    labels=None if lazy is None else lazy.labels,
                    before_commit=None if lazy is None else lazy.before_commit,
                ),
                self.snapshotter,
                self.session,
                applied.staged,
                applied.result,
                chain_id,
                parent,
            )
        except FsnapError as exc:
            self.progress.blob_failed(desc, _naming(desc, exc))
            raise type(exc)(_naming(desc, exc)) from None
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(remove_tree, applied.staged)
        self.progress.layer_unpacked(desc, chain_id)

    async def _reuse(self, chain_id: str) -> bool:
        """Whether snapshot ``chain_id`` exists; if so it is touched, so that a gc running
        now keeps it for this pull (see ``LocalSnapshotter.touch``)."""
        return await trio.to_thread.run_sync(self.snapshotter.touch, chain_id)

    def _ready_event(self, digest: str) -> trio.Event:
        return self._event(self._blob_ready, digest)

    @staticmethod
    def _event(events: dict[str, trio.Event], digest: str) -> trio.Event:
        return events.setdefault(digest, trio.Event())

    # -- labels -----------------------------------------------------------------------------

    def _label_all(self) -> None:
        for plan in self._plans:
            for desc, diff_id in zip(plan.manifest.layers, plan.diff_ids, strict=True):
                if self._is_lazy(desc) and not self.content.exists(desc.digest):
                    continue  # not fetched: fsnap.lazy labels it once it is complete
                self.content.update_labels(desc.digest, {UNCOMPRESSED_LABEL: diff_id})
            config = plan.manifest.config.digest
            self.content.update_labels(config, {SNAPSHOT_LABEL: plan.chain[-1]})


def _naming(desc: Descriptor, exc: FsnapError) -> str:
    """The error's message, prefixed with the layer unless it names it already."""
    text = str(exc)
    return text if desc.digest in text else f"unpacking layer {desc.digest}: {text}"


async def pull_unpacked(
    pull: Callable[[LayerSink], Awaitable[T]],
    snapshotter: LocalSnapshotter,
    content: ContentStore,
    work_root: Path,
    *,
    platform: Platform | None = None,
    progress: PullProgress | None = None,
    limit: SizeLimit | None = None,
    lazy: LazyLayers | None = None,
) -> T:
    """Run ``pull(sink)`` with an unpacker as its sink; return once everything is committed.

    The unpacker stages under ``work_root`` (same filesystem as the snapshots); stale
    sessions of dead processes are cleaned first, ours is removed after. The first typed
    error of any layer or of the pull is what a failure raises."""
    await trio.to_thread.run_sync(clean_stale, work_root, snapshotter)
    session = await trio.to_thread.run_sync(open_session, work_root)
    appliers = ApplierPool(processes_wanted(), keep_fds=(session.lock_fd,))
    try:
        await appliers.open()
        async with trio.open_nursery() as nursery:
            unpacker = Unpacker(
                snapshotter,
                content,
                session,
                nursery,
                platform or Platform.host(),
                progress or PullProgress(),
                limit,
                lazy,
                appliers,
            )
            try:
                result = await pull(unpacker)
                await unpacker.finish()
            finally:
                unpacker.abort()
    except BaseExceptionGroup as group:
        raise first_fsnap_error(group) from None
    finally:
        with trio.CancelScope(shield=True):
            await appliers.aclose()
            await trio.to_thread.run_sync(session.close)
    return result


async def _first_of(*events: trio.Event) -> None:
    """Return as soon as any of ``events`` is set."""
    async with trio.open_nursery() as nursery:

        async def wait(event: trio.Event) -> None:
            await event.wait()
            nursery.cancel_scope.cancel()

        for event in events:
            nursery.start_soon(wait, event)
