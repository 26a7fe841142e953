"""On-demand contents of a mount's lazy layers: a file is fetched before it is first served.

``LazyFiles.ensure(source, start, end)`` is awaited by the mount before it serves bytes
``[start, end)`` of a regular file's ``source`` (its path in a layer directory): the
read-only mount asks at open for the first byte (a one-chunk file comes whole) and at
each read for the bytes read; a writable mount asks for the whole file before it opens
or copies it up. For a file of a lazy layer not yet present it fetches the chunks covering
the range that are not here yet with HTTP Range requests (chunks whose compressed bytes
lie within ``BATCH_GAP`` of each other share one request; a file read in order gets its
next chunks with the one read, ``read_ahead``; a file's last bytes bring the small
files of its directory along, ``NEIGHBOURS``), decodes and verifies each
against its TOC digest (``fsnap.lazy.chunks``), writes them into the file in the layer
directory (its first fetch creates it) and serves them. ``record_fetches`` (beside the
serving, for the mount's life) then flushes the files written and only then records
their chunks (once all are here: the file) as present in LMDB (``fsnap.lazy.state``), all
that piled up meanwhile in one transaction: a later read, a daemon restart or a later pull
continues from there and fetches only what is missing, and a crash loses a fetch, never
claims one. The flush and the commit (10-40 ms each on a busy disk) were on every read's
path before, for ~33 files read one after another by python's start.

Meanwhile ``complete_all`` (the mount's background task, unless the mount says
``--no-background-fetch``) downloads the lazy layers' whole blobs into the content store,
up to ``DOWNLOADS`` at once and the smallest blob first (a layer whole soonest), each from
its start (eStargz puts the prioritised files first, before its prefetch landmark, so they
arrive first) or from where an ingest left by another writer stops (``fsnap.lazy.early``:
``mount --lazy --pull`` starts the downloads as it pulls), and completes each layer
(``fsnap.lazy.complete``): every file present, diff_id checked, labels gone. A network
failure retries with backoff; a mismatch is logged as an error and the layer stays lazy
(reads still verify each chunk).

Reads come first: the background downloads run on their own connections and only after no
read has fetched anything for ``QUIET`` seconds; a read that starts a request meanwhile
cancels theirs (what arrived is kept: the ingest resumes from there). Ranges the reads
fetched are kept (``fsnap.lazy.rawcache``) and copied into the blob, not fetched twice.
The other way round, a read first takes what the content store holds of the blob
(``ContentStore.read_held``: the committed blob, or the part of its ingest the early
downloads or this mount's download have written): the chunks lying there are decoded and
verified from it without a request (and without pausing the downloads), those that do
not verify are fetched like the rest. In the bench's python start, the early downloads
had brought 15-20 MB into the ingests when python began its 26 requests, none of which
looked there (docs/benchmarks.md, "Reads from the ingests").

Failures: a request is retried by the registry client (``MAX_RETRIES``), and the whole
fetch must end within ``READ_DEADLINE`` seconds; otherwise ``ensure`` raises
``Unavailable`` (the mount answers EIO) and nothing is recorded, so the next read tries
again. Bytes that do not verify raise ``DigestMismatch`` (EIO too): wrong bytes are never
written, let alone served. Concurrent opens of one file wait for a single fetch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import lmdb
import trio

from fsnap.content.api import Writer
from fsnap.content.store import ContentStore
from fsnap.db import Database
from fsnap.errors import AlreadyExists, DigestMismatch, FsnapError, Unavailable
from fsnap.labels import LAZY_LABEL
from fsnap.lazy.access import given
from fsnap.lazy.chunks import decode_chunk
from fsnap.lazy.complete import complete_layer, one_pass
from fsnap.lazy.onepass import OnePass
from fsnap.lazy.pull import fetch_range, stream_range
from fsnap.lazy.rawcache import RawCache
from fsnap.lazy.state import (
    Fetched,
    FileTable,
    LazyRecord,
    flush_fetched,
    is_present,
    mark_fetched,
    present,
    present_chunks,
    read_record,
    write_file,
)
from fsnap.lazy.toc import Chunk, Format, TocEntry
from fsnap.reference import Reference
from fsnap.remotes.registry import RegistryClient
from fsnap.snapshots.info import Info
from fsnap.snapshots.snapshotter import LocalSnapshotter

log = logging.getLogger(__name__)

# A read waits at most this long for its file (all retries included), then gets EIO.
READ_DEADLINE = 30.0
MAX_RETRIES = 2
# Chunks whose compressed ranges are this close go in one request (the gap is fetched
# and dropped: cheaper than another round trip on any real link).
BATCH_GAP = 64 << 10
# The background download waits until reads have been idle this long (a program starting
# opens its files a few milliseconds apart: the download must not slip in between).
QUIET = 0.25
# Blobs downloaded at once, smallest first. One connection left this benchmark link a third
# idle (eStargz bench image, 100 Mbit/s, 20 ms: 8.5 MB/s of 12.5); two fill it, and more
# only split it: the bench image was complete as soon with two as with four (medians of 4
# interleaved runs 16.80 / 16.62 s, a full pull 14.57 s: 1.15x / 1.14x; load 2.5-4.7),
# and each layer is whole sooner (fsnap.lazy.early).
DOWNLOADS = 2
# A range the reads fetched shorter than this is fetched again with its neighbours rather
# than copied: a request more costs a round trip (20 ms at 100 Mbit/s carry 250 KB).
COPY_MIN = 256 << 10
# The landmark prefetch fetches the prioritised files in one request up to this many bytes.
PREFETCH_MAX = 64 << 20
# A file read in order (its chunk before the one read is here) gets its next chunks with
# the one read, in the same request, up to this many compressed bytes: a whole-file read
# of a file of N chunks costs two requests instead of N.
READ_AHEAD = 16 << 20
# A read that fetches a file's last bytes also fetches the other files of its directory
# that lie next to it in the blob, when all of them span at most this many compressed bytes
# (kept in the ``RawCache``: their own reads decode them from there, without a request).
# A program reads files of one directory together (python's start: the modules of a
# package's ``__pycache__``); on the bench image it made 33 requests 26 for 0.12 MB more
# (replayed from the proxy's log). The limit is a round trip's worth of bytes at 100 Mbit/s
# and 20 ms, as ``COPY_MIN``: a neighbour read later saves more than the bytes cost.
NEIGHBOURS = 256 << 10
# Bytes of the blob downloaded per write into the ingest.
WRITE_BATCH = 1 << 20
# Writes the download may be ahead of the completion's one pass (``_Feeding``).
FEED_BACKLOG = 16
# At unmount, the fetches not recorded yet are flushed and recorded within this long.
RECORD_AT_EXIT = 10.0


@dataclass
class LazyLayer:
    """One lazy snapshot of the mount: what to fetch from where, and what is here."""

    name: str
    dir: Path
    record: LazyRecord
    files: FileTable
    present: set[str]
    raw: RawCache
    locks: dict[str, trio.Lock] = field(default_factory=dict)
    # Files read in part: the offsets of their chunks here (loaded from LMDB on first use).
    fetched: dict[str, set[int]] = field(default_factory=dict)
    # Files whose size this process has set on disk (a skeleton file is empty).
    sized: set[str] = field(default_factory=set)

    def missing_bytes(self) -> int:
        return sum(self.files.size(p) for p in self.files if p not in self.present)


class LazyFiles:
    """The lazy layers of one mount (built in the daemon, which owns ``db``)."""

    def __init__(
        self,
        db: Database,
        layers: list[LazyLayer],
        snapshots: LocalSnapshotter,
        content: ContentStore,
    ) -> None:
        self.db = db
        self.layers = layers
        self.snapshots = snapshots
        self.content = content
        # (a string per file, not os.path.join: 0.13 s of a daemon's start for 8,122 files)
        self._by_source: dict[str, tuple[LazyLayer, str]] = {
            f"{base}/{path}": (layer, path)
            for layer, base in ((layer, os.fspath(layer.dir)) for layer in layers)
            for path in layer.files
        }
        self._registries: dict[str, RegistryClient] = {}
        self._reads = 0  # fetches for reads in progress
        self._last_read = 0.0  # trio.current_time() when the last one started or ended
        self._quiet = trio.Event()  # set while no read fetches
        self._quiet.set()
        self._download_scopes: set[trio.CancelScope] = set()
        self._downloading = trio.CapacityLimiter(DOWNLOADS)
        self._unrecorded: list[tuple[LazyLayer, Fetched]] = []  # written, not flushed yet
        self._written = trio.Event()
        self._when_quiet: list[Callable[[], None]] = []

    @classmethod
    def for_chain(
        cls, snapshots: LocalSnapshotter, chain: list[Info], db: Database, content: ContentStore
    ) -> LazyFiles | None:
        """The lazy layers among ``chain``; None when there are none."""
        layers = []
        for info in chain:
            if LAZY_LABEL not in info.labels:
                continue
            record = read_record(snapshots.state_dir(info.name))
            layers.append(
                LazyLayer(
                    info.name,
                    snapshots.dir(info.name),
                    record,
                    record.files,
                    present(db, info.name),
                    RawCache(snapshots.state_dir(info.name)),
                )
            )
        return cls(db, layers, snapshots, content) if layers else None

    def pending(self, source: str) -> bool:
        """Whether ``source`` still has to be fetched before it is served."""
        found = self._by_source.get(source)
        return found is not None and found[1] not in found[0].present

    async def ensure_readable(self, source: str, start: int = 0, end: int | None = None) -> None:
        """``ensure``, for a file system about to serve ``source``: a failure is logged and
        raised as ``OSError(EIO)`` (a later read tries again)."""
        if not self.pending(source):
            return
        try:
            await self.ensure(source, start, end)
        except FsnapError as exc:
            log.warning("lazy fetch of %s failed: %s", source, exc)
            raise OSError(errno.EIO, str(exc)) from None

    async def ensure(self, source: str, start: int = 0, end: int | None = None) -> None:
        """Make bytes ``[start, end)`` of ``source`` present (``end`` None: the whole file):
        the chunks covering them that are not here yet, in as few requests as ``batches``
        makes (see the module docstring for failures)."""
        found = self._by_source.get(source)
        if found is None:
            return
        layer, path = found
        if path in layer.present:
            return
        lock = layer.locks.setdefault(path, trio.Lock())
        async with lock:
            if path in layer.present:
                return
            if await trio.to_thread.run_sync(is_present, self.db, layer.name, path):
                layer.present.add(path)  # completed meanwhile (by a pull, say)
                return
            have = layer.fetched.get(path)
            if have is None:
                have = await trio.to_thread.run_sync(present_chunks, self.db, layer.name, path)
                layer.fetched[path] = have
            entry = layer.files[path]
            stop = entry.size if end is None else end
            missing = [
                c
                for c in entry.chunks
                if not c.zeros and c.offset not in have and c.offset < stop
                if c.offset + c.size > start
            ]
            missing += read_ahead(entry.chunks, have, missing)
            whole = all(c.zeros or c.offset in have for c in entry.chunks)
            if not (missing or whole or (not have and path not in layer.sized)):
                return  # what is asked for is here already
            try:
                with trio.fail_after(READ_DEADLINE):
                    await self._fetch(layer, path, missing)
            except trio.TooSlowError:
                raise Unavailable(
                    f"{path}: not fetched within {READ_DEADLINE:g} s from {layer.record.reference}"
                ) from None

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """A read's fetch: the background download stops (``QUIET``) until reads are idle."""
        if self._reads == 0:
            self._quiet = trio.Event()
        self._reads += 1
        self._last_read = trio.current_time()
        for scope in self._download_scopes:
            scope.cancel()
        try:
            yield
        finally:
            self._reads -= 1
            self._last_read = trio.current_time()
            if self._reads == 0:
                self._quiet.set()

    async def _wait_for_quiet(self) -> None:
        """Until no read has fetched anything for ``QUIET`` seconds."""
        while True:
            await self._quiet.wait()
            idle = trio.current_time() - self._last_read
            if self._reads == 0 and idle >= QUIET:
                return
            await trio.sleep(QUIET - idle if self._reads == 0 else QUIET)

    async def _fetch(self, layer: LazyLayer, path: str, chunks: list[Chunk]) -> None:
        """``chunks`` of ``path`` fetched, verified, written, flushed, then recorded (the
        file's size is set on disk the first time, so its holes read as zeros)."""
        entry = layer.files[path]
        ref = Reference.parse(layer.record.reference)
        registry = await self._client(ref)
        desc = layer.record.descriptor
        fmt = layer.record.layer.format
        pieces: list[tuple[Chunk, bytes]] = []
        for batch in batches(tuple(chunks)):
            start, end = batch[0].start, max(c.end for c in batch)
            if layer.raw.holds(start, end):  # fetched already (by the landmark prefetch)
                try:
                    data = await trio.to_thread.run_sync(layer.raw.read, start, end)
                    pieces += await trio.to_thread.run_sync(_decode, fmt, batch, start, data)
                    continue
                except Unavailable:  # dropped meanwhile: fetched below
                    pass
                except DigestMismatch as exc:  # the prefetch kept bad bytes: not again
                    log.warning("lazy layer %s: dropping prefetched bytes: %s", layer.name, exc)
                    layer.raw.close()
            held, batch = await trio.to_thread.run_sync(self._from_store, layer, batch)
            pieces += held
            if not batch:
                continue
            start, end = batch[0].start, max(c.end for c in batch)
            if end == _end_of(entry):  # the file's last bytes: its small directory too
                run = await trio.to_thread.run_sync(layer.files.directory_run, path, NEIGHBOURS)
                start, end = (min(start, run[0]), max(end, run[1])) if run else (start, end)
            with self._reading():
                data = await fetch_range(registry, ref, desc, start, end)
            pieces += await trio.to_thread.run_sync(_decode, fmt, batch, start, data)
            # Kept: the batch is verified; its neighbours are when they are read.
            await trio.to_thread.run_sync(layer.raw.put, start, data)
        created = await trio.to_thread.run_sync(self._write, layer, path, pieces)
        layer.sized.add(path)
        have = layer.fetched.setdefault(path, set())
        have.update(chunk.offset for chunk in chunks)
        whole = all(c.zeros or c.offset in have for c in entry.chunks)
        size = entry.size if whole else None
        self._unrecorded.append((layer, Fetched(layer.name, path, tuple(chunks), size, created)))
        self._written.set()
        if whole:
            layer.present.add(path)
            layer.fetched.pop(path, None)

    def _from_store(
        self, layer: LazyLayer, batch: list[Chunk]
    ) -> tuple[list[tuple[Chunk, bytes]], list[Chunk]]:
        """The chunks of ``batch`` (sorted) whose compressed bytes the content store holds
        already (``ContentStore.read_held``: the committed blob, or what its ingest has
        received from an early download or this mount's own), decoded and verified, and
        the chunks still to fetch: those beyond what is held, and those whose held bytes
        do not verify (never served nor written; the registry's bytes are). Blocking."""
        start, end = batch[0].start, max(c.end for c in batch)
        data = self.content.read_held(layer.record.descriptor.digest, start, end)
        if not data:
            return [], batch
        fmt = layer.record.layer.format
        held: list[tuple[Chunk, bytes]] = []
        rest: list[Chunk] = []
        for chunk in batch:
            if chunk.end - start > len(data):
                rest.append(chunk)
                continue
            try:
                held.append(
                    (chunk, decode_chunk(fmt, chunk, data[chunk.start - start : chunk.end - start]))
                )
            except DigestMismatch as exc:
                log.warning("lazy layer %s: the store's bytes of a chunk: %s", layer.name, exc)
                rest.append(chunk)
        return held, rest

    def _write(self, layer: LazyLayer, path: str, pieces: list[tuple[Chunk, bytes]]) -> bool:
        """``pieces`` into ``path``'s file, with its index entry's metadata, not flushed
        (``record_fetches`` does); whether the file was created. Blocking."""
        meta = self.snapshots.index.entry(layer.name, path)
        if meta is None:  # not in the index: the TOC's own word for it
            meta = dataclasses.replace(layer.files[path].meta, path=path)
        return write_file(layer.dir, meta, pieces, sync=False)

    async def run(self, complete: bool = True) -> None:
        """The mount's background work, for its life: ``record_fetches``, and
        (``complete``) ``complete_all``."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.record_fetches)
            nursery.start_soon(self._run_when_quiet)
            if complete:
                await self.complete_all()

    def when_quiet(self, job: Callable[[], None]) -> None:
        """Run ``job`` (blocking, in a thread) once reads have been quiet for ``QUIET``
        seconds, at the earliest ``QUIET`` after ``run`` started (a program started on
        a new mount reads at once): work that may wait, off the first reads' path."""
        self._when_quiet.append(job)

    async def _run_when_quiet(self) -> None:
        await trio.sleep(QUIET)
        while self._when_quiet:
            await self._wait_for_quiet()
            await trio.to_thread.run_sync(self._when_quiet.pop(0))

    async def record_fetches(self) -> None:
        """Flush the files reads wrote, then record them present (``fsnap.lazy.state``),
        as they come, each batch in one LMDB transaction; until cancelled (the unmount),
        then what is left, within ``RECORD_AT_EXIT`` seconds."""
        try:
            while True:
                await self._written.wait()
                self._written = trio.Event()
                await self._record()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(RECORD_AT_EXIT):
                await self._record()

    async def _record(self) -> None:
        batch, self._unrecorded = self._unrecorded, []
        if batch:
            try:
                await trio.to_thread.run_sync(self._flush_and_mark, batch)
            except (OSError, lmdb.Error) as exc:  # not recorded: fetched again next time
                log.error("lazy fetches not recorded: %s", exc)

    def _flush_and_mark(self, batch: list[tuple[LazyLayer, Fetched]]) -> None:
        """Blocking: each file flushed, then all recorded in one transaction."""
        for layer, done in batch:
            flush_fetched(layer.dir, done)
        mark_fetched(self.db, [done for _, done in batch])

    async def complete_all(self) -> None:
        """The background fetch: first every layer's prioritised files (``_prefetch``),
        then the lazy layers' blobs, ``DOWNLOADS`` at a time, each layer's completion
        starting as soon as its blob is here (its flush of the file system takes seconds on
        a busy disk: the link would idle meanwhile)."""
        for layer in self.layers:
            await self._prefetch(layer)
        async with trio.open_nursery() as completions:
            # Smallest blob first: each layer whole as soon as can be (reads of a layer
            # whose blob is here need no request). Its first slot is taken here, in order.
            for layer in sorted(self.layers, key=lambda layer: layer.record.descriptor.size):
                await self._downloading.acquire_on_behalf_of(layer.name)
                completions.start_soon(self._complete, layer, completions, True)

    async def _prefetch(self, layer: LazyLayer) -> None:
        """The files the layer lists before its ``.prefetch.landmark`` (what its image
        said a container reads first) fetched as if read: their compressed bytes, which
        lie together at the blob's start, in one Range request (at most ``PREFETCH_MAX``
        bytes; a longer list is fetched file by file). A failure (a disk error
        included) is logged: reads fetch the files later."""
        end = layer.record.prefetch_end
        if end is None:
            return
        try:
            wanted = await trio.to_thread.run_sync(_starting_before, layer, end)
            chunks = [c for path in wanted for c in layer.files[path].chunks if not c.zeros]
            start = min((c.start for c in chunks), default=0)
            end = max((c.end for c in chunks), default=0)
            if chunks and end - start <= PREFETCH_MAX and not await self._held(layer, end):
                with self._reading():
                    await self._fetch_raw(layer, start, end)
            for path in wanted:
                await self.ensure(os.path.join(layer.dir, path))
        except (FsnapError, OSError) as exc:  # a disk error too: never the mount's end
            log.warning("prefetch of lazy layer %s: %s", layer.name, exc)
            return
        log.info("lazy layer %s: %d prioritised files prefetched", layer.name, len(wanted))

    async def _held(self, layer: LazyLayer, end: int) -> bool:
        """Whether the content store holds the layer's blob up to ``end`` (committed, or
        its ingest that far: an ingest holds a prefix of the blob)."""
        digest = layer.record.descriptor.digest
        return bool(await trio.to_thread.run_sync(self.content.read_held, digest, end - 1, end))

    async def _fetch_raw(self, layer: LazyLayer, start: int, end: int) -> None:
        """The blob's ``[start, end)`` into the layer's ``RawCache`` (no file written)."""
        ref = Reference.parse(layer.record.reference)
        registry = await self._client(ref)
        try:
            with trio.fail_after(READ_DEADLINE):
                data = await fetch_range(registry, ref, layer.record.descriptor, start, end)
        except trio.TooSlowError:
            raise Unavailable(f"not fetched within {READ_DEADLINE:g} s") from None
        await trio.to_thread.run_sync(layer.raw.put, start, data)

    async def _complete(
        self, layer: LazyLayer, completions: trio.Nursery, holding: bool = False
    ) -> None:
        """Download ``layer``'s blob (again and again while the registry is unavailable),
        then start its completion in ``completions``; ``holding``: the caller took this
        layer's first download slot (it is released here). Another failure (a disk error
        included) is logged and the layer stays lazy."""
        delay = 1.0
        while True:
            try:
                if not holding:
                    await self._downloading.acquire_on_behalf_of(layer.name)
                holding = False
                try:
                    streamed = await self._download(layer)
                finally:
                    self._downloading.release_on_behalf_of(layer.name)
            except Unavailable as exc:
                log.warning("background fetch of %s: %s (again in %g s)", layer.name, exc, delay)
                await trio.sleep(delay)
                delay = min(2 * delay, 60.0)
                continue
            except (FsnapError, OSError) as exc:  # a disk error too: never the mount's end
                log.error("lazy layer %s cannot be completed: %s", layer.name, exc)
                return
            completions.start_soon(self._finish, layer, streamed, completions)
            return

    async def _finish(
        self, layer: LazyLayer, streamed: OnePass | None, completions: trio.Nursery
    ) -> None:
        """``layer``'s completion from its downloaded blob (``fsnap.lazy.complete``). A
        failure (a disk error included) is logged and the layer stays lazy: the mount
        serves on, its reads fetch as before."""
        try:
            await trio.to_thread.run_sync(
                complete_layer, self.snapshots, self.content, self.db, layer.name, streamed
            )
        except DigestMismatch as exc:
            if not layer.raw.held():
                log.error("lazy layer %s cannot be completed: %s", layer.name, exc)
                return
            # Bytes kept from reads or the prefetch that no chunk digest covers (tar
            # headers) may be the bad ones: once more, all from the registry.
            log.warning("lazy layer %s: %s; fetching it all again", layer.name, exc)
            layer.raw.close()
            await self._complete(layer, completions)
            return
        except (FsnapError, OSError) as exc:  # a disk error too: never the mount's end
            log.error("lazy layer %s cannot be completed: %s", layer.name, exc)
            return
        layer.present.update(layer.files)
        layer.raw.close()
        log.info("lazy layer %s is complete", layer.name)

    async def _download(self, layer: LazyLayer) -> OnePass | None:
        """The layer's whole blob into the content store: the pull's resumable ingest, its
        digest verified at commit. Fed from the ranges the reads fetched and, for the rest,
        Range requests made only while reads are quiet (see the module docstring). The
        completion's one pass (``fsnap.lazy.onepass``: returned, for ``complete_layer``)
        follows the ingest from its first byte (``_Feeding``): the bytes an earlier writer
        left (``fsnap mount --lazy --pull`` starts the downloads as it pulls, a killed
        daemon leaves its download) are replayed from the ingest's file while the rest
        downloads."""
        from fsnap.progress import PullProgress
        from fsnap.pull import Puller, PullOptions

        desc = layer.record.descriptor
        ref = Reference.parse(layer.record.reference)
        # Opening a resumed ingest hashes what it holds and the one pass reads the index:
        # CPU work that waits for a program started on the new mount to read its files.
        await trio.sleep(QUIET)
        await self._wait_for_quiet()
        async with client_for(ref) as registry:
            puller = Puller(self.content, registry, ref, PullOptions(), PullProgress(), None)
            writer = await puller.open_writer(desc)
            if writer is None:
                return None  # committed already (by a pull, say)
            streamed = await trio.to_thread.run_sync(self._one_pass, layer)
            started, resumed = trio.current_time(), writer.offset
            with writer:
                feeding = _Feeding(writer, streamed)
                failed: FsnapError | None = None
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._follow, feeding, await feeding.replay())
                    try:
                        paused = await self._fill_ingest(layer, registry, ref, feeding)
                    except FsnapError as exc:  # raised below, not in the nursery's group
                        failed = exc
                        nursery.cancel_scope.cancel()
                    finally:
                        feeding.done()
                if failed is not None:
                    raise failed
                with contextlib.suppress(AlreadyExists):
                    await trio.to_thread.run_sync(writer.commit, None)
            took = trio.current_time() - started
            log.info(
                "lazy layer %s: blob downloaded in %.2f s (%.2f s paused for reads; %d bytes "
                "were in the ingest already)",
                layer.name,
                took,
                paused,
                resumed,
            )
            return streamed

    async def _fill_ingest(
        self, layer: LazyLayer, registry: RegistryClient, ref: Reference, feeding: _Feeding
    ) -> float:
        """The rest of the blob into the ingest, while reads are quiet; the seconds paused."""
        paused = 0.0
        while feeding.offset < layer.record.descriptor.size:
            quiet = trio.current_time()
            await self._wait_for_quiet()
            paused += trio.current_time() - quiet
            with trio.CancelScope() as scope:
                self._download_scopes.add(scope)
                try:
                    await self._append(layer, registry, ref, feeding)
                finally:
                    self._download_scopes.discard(scope)
        return paused

    async def _follow(self, feeding: _Feeding, replayed: IO[bytes] | None) -> None:
        """The one pass fed the ingest's bytes in order: first those ``replayed`` (the
        ingest's bytes from before, read from its file while reads are quiet), then what
        the download writes, as it writes it."""
        if replayed is not None:
            with replayed:
                while feeding.replaying():
                    await self._wait_for_quiet()
                    await trio.to_thread.run_sync(feeding.replay_some, replayed)
        await feeding.follow()

    def _one_pass(self, layer: LazyLayer) -> OnePass:
        index = self.snapshots.index.read(layer.name)
        return one_pass(layer.record, layer.dir, index, present(self.db, layer.name))

    async def _append(
        self, layer: LazyLayer, registry: RegistryClient, ref: Reference, writer: _Feeding
    ) -> None:
        """The rest of the blob into ``writer``: held ranges copied, the others fetched."""
        desc = layer.record.descriptor
        for start, end, held in layer.raw.pieces(writer.offset, desc.size, COPY_MIN):
            if held:
                data = await trio.to_thread.run_sync(layer.raw.read, start, end)
                await writer.write(data)
                continue
            await stream_range(registry, ref, desc, start, end, writer.write, WRITE_BATCH)

    async def _client(self, ref: Reference) -> RegistryClient:
        """The reads' client for ``ref``'s registry (one per registry, kept open)."""
        registry = self._registries.get(ref.domain)
        if registry is None:
            registry = client_for(ref, max_retries=MAX_RETRIES, backoff_base=0.2, backoff_max=2.0)
            self._registries[ref.domain] = registry = await registry.__aenter__()
        return registry


class _Feeding:
    """The ingest ``writer`` and the one pass ``streamed`` that follows it from byte 0.

    The bytes the ingest held when opened are replayed to the one pass from its file
    (``replay``, ``replay_some``); what the download writes goes to the one pass through a
    channel (``follow``) of at most ``FEED_BACKLOG`` writes, so the download waits for the
    one pass only when it is that far behind (the replay of what an early download left is
    tens of MB: the link goes on meanwhile)."""

    def __init__(self, writer: Writer, streamed: OnePass) -> None:
        self.writer = writer
        self.streamed = streamed
        self._resumed = writer.offset  # bytes to replay from the ingest's file
        self._replayed = 0
        self._send, self._receive = trio.open_memory_channel[tuple[int, bytes]](FEED_BACKLOG)

    @property
    def offset(self) -> int:
        return self.writer.offset

    async def replay(self) -> IO[bytes] | None:
        """The ingest's file opened for the replay; None if there is nothing to replay."""
        if self._resumed == 0:
            return None
        return await trio.to_thread.run_sync(self.writer.open_written)

    def replaying(self) -> bool:
        return self._replayed < self._resumed and self.streamed.ok

    def replay_some(self, handle: IO[bytes]) -> None:
        """Blocking: the next piece of the replay into the one pass."""
        try:
            data = handle.read(min(WRITE_BATCH, self._resumed - self._replayed))
        except OSError as exc:
            data, why = b"", str(exc)
        else:
            why = "the ingest's file ended before its offset"
        if not data:  # the one pass gives up: the layer is completed in two passes
            self._replayed = self._resumed
            self.streamed.give_up(why)
            return
        self.streamed.feed(self._replayed, data)
        self._replayed += len(data)

    async def write(self, data: bytes) -> None:
        """``data`` into the ingest, then to the one pass; whole or not at all, whatever
        cancels the caller (a byte written and not followed would end the one pass)."""
        with trio.CancelScope(shield=True):
            offset = self.writer.offset
            await trio.to_thread.run_sync(self.writer.write, data)
            await self._send.send((offset, data))

    def done(self) -> None:
        """No more writes: ``follow`` returns once it has fed what was sent."""
        self._send.close()

    async def follow(self) -> None:
        """Feed the one pass what the download writes, until ``done``."""
        async with self._receive:
            async for offset, data in self._receive:
                await trio.to_thread.run_sync(self.streamed.feed, offset, data)


def client_for(ref: Reference, **options: Any) -> RegistryClient:
    """A registry client for ``ref`` with the registry options the mount was given for its
    registry (``fsnap.lazy.access``), else with the docker config's credentials."""
    access = given()
    found = access.for_domain(ref.domain) if access is not None else None
    if found is None:
        return RegistryClient(**options)
    return RegistryClient(
        plain_http=found.plain_http,
        credentials=found.credentials(),
        ca_file=found.ca_path(),
        **options,
    )


def read_ahead(chunks: tuple[Chunk, ...], have: set[int], missing: list[Chunk]) -> list[Chunk]:
    """The chunks to fetch with ``missing`` because the file is being read in order: when
    the chunk before the first missing one is here, the next ones not here yet, as far as
    ``READ_AHEAD`` compressed bytes (they lie together: one request with ``missing``)."""
    if not missing:
        return []
    at = chunks.index(missing[0])
    if at == 0 or not (chunks[at - 1].zeros or chunks[at - 1].offset in have):
        return []
    out: list[Chunk] = []
    for chunk in chunks[chunks.index(missing[-1]) + 1 :]:
        if chunk.offset in have or chunk.end - missing[0].start > READ_AHEAD:
            break
        if not chunk.zeros:
            out.append(chunk)
    return out


def _starting_before(layer: LazyLayer, end: int) -> list[str]:
    """The layer's files not present whose data starts before blob offset ``end``
    (blocking: it makes the entry of each file not present)."""
    files = layer.files
    return [p for p in files if p not in layer.present and files[p].chunks[0].start < end]


def _end_of(entry: TocEntry) -> int:
    """Where ``entry``'s last compressed bytes end in the blob (0: it has none)."""
    return max((c.end for c in entry.chunks if not c.zeros), default=0)


def _decode(fmt: Format, batch: list[Chunk], start: int, data: bytes) -> list[tuple[Chunk, bytes]]:
    """Each chunk of ``batch`` decoded and verified from ``data``, the blob from ``start``."""
    return [(c, decode_chunk(fmt, c, data[c.start - start : c.end - start])) for c in batch]


def batches(chunks: tuple[Chunk, ...]) -> list[list[Chunk]]:
    """The chunks to fetch (holes need none), grouped into requests by ``BATCH_GAP``."""
    out: list[list[Chunk]] = []
    for chunk in sorted((c for c in chunks if not c.zeros), key=lambda c: c.start):
        if out and chunk.start - max(c.end for c in out[-1]) <= BATCH_GAP:
            out[-1].append(chunk)
        else:
            out.append([chunk])
    return out
