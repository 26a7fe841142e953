"""The blob downloads ``fsnap mount --lazy --pull`` starts as it pulls, for its mount.

A lazy mount's background fetch (``fsnap.lazy.fetch``) can only start once the mount
serves: before that, the pull fetches the manifest, the TOCs and lays the layers out, and
the daemon starts, seconds in which the link carried a few hundred KB (on the bench link,
3-5 s of 100 Mbit/s idle, while a full pull downloads from its first second:
docs/benchmarks.md, "The background completion: a timeline"). So the process that pulls
also starts downloading each lazy layer's blob as soon as the pull knows the layer
(``want``), into the content store's ingest of that blob, exactly as a pull would
(``fsnap.content.writer``: resumable, every byte hashed, the digest checked at commit).
Once the mount serves, ``stop`` ends them: what arrived stays in the ingest, the writer
is closed, and the mount's background fetch resumes it (its one pass replays those bytes
from the ingest's file) instead of fetching them again. A small blob may be committed
before that, which the background fetch then finds committed. Meanwhile the mount's reads
take what the ingests hold (``ContentStore.read_held``) instead of requesting it.

Order and number, measured (docs/benchmarks.md, "Reads from the ingests"): the smallest
blob first, ``DOWNLOADS`` (two) at once. The link is shared, so more streams only split
it; what the first program on the mount needs is whole layers here soonest. On the bench
image (blobs of 9.6, 23.6, 55.5 and 75.8 MB; 100 Mbit/s, 20 ms; the mount returns 1-2 s
after the downloads start) python's start then made 5-11 requests with two at once, 6-7
with one (a lone stream carries ~8.5 of the link's 12.5 MB/s, and the second layer
trails), 7-14 with four (the python layer not yet whole when the mount returns), against
26 before the reads looked in the ingests.

The downloads run in a thread with their own trio loop and registry client (same
options as the pull), beside the pull's loop, which only hands over descriptors. They are
a head start, not a duty: any failure is logged and left to the background fetch, and
nothing here ever fails the mount. ``fsnap mount --no-background-fetch`` starts none.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import threading
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import trio

from fsnap.errors import AlreadyExists, FsnapError
from fsnap.lazy.pull import stream_range
from fsnap.oci import Descriptor
from fsnap.reference import Reference
from fsnap.remotes.registry import RegistryClient

if TYPE_CHECKING:
    from fsnap.content.api import Writer
    from fsnap.content.store import ContentStore
    from fsnap.remotes.auth import Credentials

log = logging.getLogger(__name__)

# Blobs downloaded at once, smallest first (see the module docstring for the measurements).
DOWNLOADS = 2
# The pull announces its lazy layers together (their TOCs are asked for at once): a
# download waits this long for the others to be wanted, so the smallest goes first.
GATHER = 0.05
# Bytes per write into the ingest: also the most a stop may lose (it writes what it had).
WRITE_BATCH = 1 << 20
# ``stop`` waits this long for the downloads to write what they have and close.
STOP_WAIT = 10.0


class EarlyDownloads:
    """The lazy layers' blob downloads of one ``mount --lazy --pull`` of ``ref``: use it as
    a context manager around the pull and the mount (see the module docstring)."""

    def __init__(
        self,
        content: ContentStore,
        ref: str,
        *,
        plain_http: bool | None = None,
        credentials: Credentials | None = None,
        ca_file: Path | None = None,
    ) -> None:
        self.content = content
        self.ref = Reference.parse(ref)
        self._client = RegistryClient(
            plain_http=plain_http, credentials=credentials, ca_file=ca_file
        )
        self._thread = threading.Thread(target=self._run, name="fsnap-early-downloads")
        self._ready = threading.Event()
        self._lock = threading.Lock()  # guards _token against a stop
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._registry: RegistryClient | None = None
        self._keep = True  # what ``stop`` does with the ingests
        self._wanted: list[tuple[int, int, Descriptor]] = []  # a heap: smallest first
        self._order = itertools.count()  # (ties: first wanted first)
        self.started: list[str] = []  # digests whose download began (for the log and tests)

    def __enter__(self) -> EarlyDownloads:
        self._thread.start()
        self._ready.wait()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(keep=exc_type is None)

    def want(self, desc: Descriptor) -> None:
        """Start downloading ``desc`` (a lazy layer's blob). Any thread; after ``stop``, or
        if the downloads could not start, nothing."""
        with self._lock:
            if self._token is None or self._nursery is None:
                return
            with contextlib.suppress(trio.RunFinishedError):  # its loop ended meanwhile
                self._token.run_sync_soon(self._queue, desc)

    def stop(self, keep: bool = True) -> None:
        """End the downloads: each writes what it received and closes its ingest, for the
        mount to resume; without ``keep`` (the pull or the mount failed: no mount will)
        each drops its ingest instead, leaving no abandoned download behind."""
        self._keep = keep
        with self._lock:
            token, self._token = self._token, None
            if token is not None and self._nursery is not None:
                token.run_sync_soon(self._nursery.cancel_scope.cancel)
        if self._thread.is_alive():
            self._thread.join(STOP_WAIT)
            if self._thread.is_alive():
                log.warning("early blob downloads did not stop within %g s", STOP_WAIT)

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # a head start only: never the mount's failure
            log.warning("early blob downloads ended: %s", exc)
        finally:
            self._ready.set()

    async def _main(self) -> None:
        try:
            async with self._client as registry, trio.open_nursery() as nursery:
                self._registry = registry
                self._slots = trio.CapacityLimiter(DOWNLOADS)
                with self._lock:
                    self._nursery, self._token = nursery, trio.lowlevel.current_trio_token()
                self._ready.set()
                await trio.sleep_forever()
        finally:
            with self._lock:
                self._token = None  # ``want`` does nothing from now on

    def _queue(self, desc: Descriptor) -> None:
        """In the downloads' loop: ``desc`` waits for a slot, smallest blob first."""
        assert self._nursery is not None
        heapq.heappush(self._wanted, (desc.size, next(self._order), desc))
        self._nursery.start_soon(self._next)

    async def _next(self) -> None:
        """The smallest wanted blob downloaded once a slot is free (one per ``want``)."""
        await trio.sleep(GATHER)
        async with self._slots:
            _, _, desc = heapq.heappop(self._wanted)
            await self._download(desc)

    async def _download(self, desc: Descriptor) -> None:
        from fsnap.progress import PullProgress
        from fsnap.pull import Puller, PullOptions

        assert self._registry is not None
        puller = Puller(self.content, self._registry, self.ref, PullOptions(), PullProgress(), None)
        try:
            writer = await puller.open_writer(desc)
            if writer is None:
                return  # committed already
            self.started.append(desc.digest)
            committed = False
            try:
                committed = await self._fill(writer, desc)
            finally:
                if self._keep or committed:
                    writer.close()
                else:
                    writer.discard()
        except (FsnapError, OSError) as exc:
            log.info("early download of %s: %s (the mount fetches it)", desc.digest, exc)

    async def _fill(self, writer: Writer, desc: Descriptor) -> bool:
        """The rest of ``desc`` into ``writer``, committed if it all arrives first (True)."""

        async def write(data: bytes) -> None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(writer.write, data)

        assert self._registry is not None
        if writer.offset < desc.size:
            registry, start = self._registry, writer.offset
            await stream_range(registry, self.ref, desc, start, desc.size, write, WRITE_BATCH)
        with contextlib.suppress(AlreadyExists):
            await trio.to_thread.run_sync(writer.commit, None)
        return True
