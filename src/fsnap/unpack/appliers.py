"""The pull's side of the applier processes (``fsnap.unpack.worker`` has the protocol and
the process itself): a pool of them, and the pipe a download feeds one through.

``ApplierPool.apply(job, fd)`` applies one layer from ``fd`` in an idle applier process
(started at most ``size`` at a time, kept for the next layer), or, when none could be
started, in a thread of the pull (the tested fallback). An applier that fails in any other
way than with a typed answer (it died, the pull was cancelled while it worked) is killed
and not reused: its layer fails with ``FailedPrecondition``, or the cancellation goes on.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import socket
import subprocess
import sys
from collections import deque
from dataclasses import asdict

import trio

from fsnap import logs
from fsnap.archive.result import ApplyResult
from fsnap.errors import FailedPrecondition
from fsnap.progress import ByteMeter
from fsnap.unpack.stopping import run_stoppable
from fsnap.unpack.worker import (
    JOB_HEADER,
    REPLY_HEADER,
    FdSource,
    Job,
    decode_reply,
)

log = logging.getLogger(__name__)

# Bytes of a layer queued between its download and its applier's pipe (the pipe holds
# another PIPE_SIZE): the former in-process pipe's bound.
FEED_QUEUE = 8 << 20
# How long a closing pool waits for an idle applier to exit before killing it.
EXIT_WAIT = 5.0


class ApplierDied(FailedPrecondition):
    """An applier process ended without answering (killed, out of memory, crashed)."""


class Applier:
    """One applier process and the parent's end of its socket."""

    def __init__(
        self, process: subprocess.Popen[bytes], pidfd: int, sock: trio.socket.SocketType
    ) -> None:
        self.process = process
        self.sock = sock
        self.ready = False
        self._pidfd = pidfd

    @classmethod
    def start(cls, keep_fds: tuple[int, ...]) -> Applier:
        """Start one (``keep_fds``: descriptors it inherits, e.g. the session lock).

        Started from the loop's own thread, not a worker thread (as ``trio.run_process``
        would): PR_SET_PDEATHSIG fires when the *thread* that forked exits, and trio's idle
        worker threads do exit."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            command = [
                sys.executable,
                "-P",  # not the working directory first on sys.path
                "-m",
                "fsnap.unpack.worker",
                str(theirs.fileno()),
                str(os.getpid()),
                logs.current_level(),
            ]
            process = subprocess.Popen(
                command,
                pass_fds=(theirs.fileno(), *keep_fds),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        try:
            pidfd = os.pidfd_open(process.pid)
        except OSError:  # a kernel before 5.3
            process.kill()
            process.wait()
            ours.close()
            raise
        return cls(process, pidfd, trio.socket.from_stdlib_socket(ours))

    async def wait_ready(self) -> None:
        """Until its imports are done (its first message); ``ApplierDied`` if it died."""
        if not self.ready:
            await self._receive()
            self.ready = True

    async def exchange(self, job: Job, fd: int) -> bytes:
        """Send ``job`` with ``fd``; its answer (see ``decode_reply``)."""
        await self.wait_ready()
        body = json.dumps(asdict(job)).encode()
        message = JOB_HEADER.pack(len(body)) + body
        sent = await self.sock.sendmsg(
            [message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fd.to_bytes(4, sys.byteorder))]
        )
        if sent < len(message):
            await self._send_all(message[sent:])
        return await self._receive()

    async def _send_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[await self.sock.send(view) :]

    async def _receive(self) -> bytes:
        (length,) = REPLY_HEADER.unpack(await self._exactly(REPLY_HEADER.size))
        return await self._exactly(length)

    async def _exactly(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            try:
                data = await self.sock.recv(min(n - len(out), 1 << 20))
            except ConnectionResetError:
                data = b""
            if not data:
                raise ApplierDied(f"the applier process ended ({await self._status()})")
            out += data
        return bytes(out)

    async def wait(self) -> int:
        """Until it exits (its pidfd turns readable): its exit status."""
        if self.process.poll() is None:
            await trio.lowlevel.wait_readable(self._pidfd)
        return self.process.wait()

    async def _status(self) -> str:
        with trio.move_on_after(1):
            await self.wait()
        code = self.process.returncode
        if code is None:
            return "still running"
        return f"killed by signal {-code}" if code < 0 else f"exit status {code}"

    async def close(self) -> None:
        """Let it exit (its socket ends), kill it if it does not in ``EXIT_WAIT`` s."""
        self.sock.close()
        with trio.move_on_after(EXIT_WAIT):
            await self.wait()
        await self.kill()

    async def kill(self) -> None:
        self.sock.close()
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        with trio.CancelScope(shield=True):
            await self.wait()
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1


class ApplierPool:
    """At most ``size`` applier processes, started when the pool opens and reused."""

    def __init__(self, size: int, keep_fds: tuple[int, ...] = ()) -> None:
        self.size = size
        self._keep_fds = keep_fds
        self._idle: list[Applier] = []
        self._slots = trio.Semaphore(max(1, size))
        self._threads = trio.CapacityLimiter(1)  # the fallback: one applier thread
        self._broken = size == 0

    async def open(self) -> None:
        """Start the appliers now, so that their start-up overlaps the manifest's fetch."""
        for _ in range(self.size):
            applier = self._start()
            if applier is None:
                return
            self._idle.append(applier)

    def _start(self) -> Applier | None:
        try:
            return Applier.start(self._keep_fds)
        except OSError as exc:
            self._fall_back(exc)
            return None

    def _fall_back(self, exc: BaseException) -> None:
        if not self._broken:
            log.warning("layers are applied in threads: no applier process (%s)", exc)
        self._broken = True

    async def aclose(self) -> None:
        """Let every idle applier exit, all at once, and wait for them (killing any that
        takes over ``EXIT_WAIT``): none outlives the pull's staging session."""
        idle, self._idle = self._idle, []
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                for applier in idle:
                    nursery.start_soon(applier.close)

    async def apply(self, job: Job, fd: int) -> ApplyResult:
        """Apply ``job`` reading ``fd`` (the caller closes it after)."""
        if not self._broken:
            async with self._slots:
                applier = await self._take()
                if applier is not None:
                    return await self._apply_in(applier, job, fd)
        return await _apply_here(job, fd, self._threads)

    async def _take(self) -> Applier | None:
        """An idle, started applier (a new one if none is idle); None: fall back."""
        applier = self._idle.pop() if self._idle else self._start()
        if applier is None:
            return None
        try:
            await applier.wait_ready()
        except ApplierDied as exc:  # it could not even import: no process will do
            await applier.kill()
            self._fall_back(exc)
            return None
        return applier

    async def _apply_in(self, applier: Applier, job: Job, fd: int) -> ApplyResult:
        try:
            answer = await applier.exchange(job, fd)
        except ApplierDied as exc:
            await applier.kill()
            raise ApplierDied(f"applying layer {job.digest}: {exc}") from None
        except BaseException:  # cancelled mid-exchange: its state is unknown
            await applier.kill()
            raise
        self._idle.append(applier)  # it answered: it is fine for the next layer
        return decode_reply(answer)


async def _apply_here(job: Job, fd: int, limiter: trio.CapacityLimiter) -> ApplyResult:
    """The fallback: the same job in a worker thread of this process, stopped before its
    next member when the pull is cancelled (``fsnap.unpack.stopping``)."""
    source = FdSource(fd)
    try:
        return await run_stoppable(
            functools.partial(job.run, source), limiter=limiter, wake=source.interrupt
        )
    finally:
        source.close()


class FeedPipe:
    """The download's side of one layer's pipe into its applier: a queue of at most
    ``limit`` bytes in this process, which ``pump`` writes into the OS pipe.

    ``write`` waits (without blocking the loop) only while the queue is full, so a blob
    smaller than the queue downloads at the network's pace whatever the applier's (as the
    former in-process pipe did: an interrupted pull then leaves the blob complete), and
    memory stays flat. ``close`` ends the data (after a failed download the applier sees a
    truncated blob's end, whose result the unpacker discards); ``drop`` (the applier stopped
    reading, or the pull did) discards what is queued and whatever comes later, so a broken
    applier never stalls the download. ``meter`` counts the bytes handed to the applier."""

    def __init__(self, meter: ByteMeter, limit: int = FEED_QUEUE) -> None:
        self.meter = meter
        self._limit = limit
        self._chunks: deque[bytes] = deque()
        self._queued = 0
        self._more = trio.Event()
        self._room = trio.Event()
        self._ended = False
        self._dropped = False

    async def write(self, data: bytes) -> None:
        while self._queued >= self._limit and not self._dropped:
            self._room = trio.Event()
            await self._room.wait()
        if self._dropped or self._ended:
            return
        self._chunks.append(data)
        self._queued += len(data)
        self._more.set()

    def close(self) -> None:
        self._ended = True
        self._more.set()

    def drop(self) -> None:
        self._dropped = True
        self._chunks.clear()
        self._queued = 0
        self._room.set()
        self._more.set()

    async def pump(self, fd: int) -> None:
        """Write the queue into ``fd`` (a pipe's write end) until the end, then close it."""
        out = trio.lowlevel.FdStream(fd)
        try:
            while True:
                while not (self._chunks or self._ended or self._dropped):
                    self._more = trio.Event()
                    await self._more.wait()
                if self._dropped or not self._chunks:
                    return
                data = self._chunks[0]
                try:
                    await out.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self.drop()  # the applier stopped reading
                    return
                if self._chunks and self._chunks[0] is data:
                    self._chunks.popleft()
                    self._queued -= len(data)
                self.meter.count += len(data)
                self._room.set()
        finally:
            out.close()
