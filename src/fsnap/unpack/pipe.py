"""A bounded byte pipe from the trio loop to one worker thread.

The download runs on the trio loop; the tar applier runs in a worker thread and wants a
plain blocking file (``read(n)``). ``BytePipe`` joins them: the loop side ``await``s
``write`` (which never blocks the loop: when the pipe is full it waits on a trio event that
the reader sets once it has made room), the thread side calls ``read`` (which blocks the
thread on a condition variable). The bound keeps memory flat whatever the layer size: a
download that outruns its applier simply waits for it.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque

import trio

from fsnap.errors import FailedPrecondition

DEFAULT_LIMIT = 8 << 20


class PipeAborted(FailedPrecondition):
    """The writer gave up (the download failed or the pull was cancelled)."""


class BytePipe:
    """One writer on the trio loop, one reader in a thread; at most ``limit`` bytes queued.

    ``close`` marks the end of the data; ``abort`` makes the reader fail instead. When the
    reader is done (or failed) it calls ``detach``: further writes are dropped, so that a
    broken applier never stalls the download that feeds it.
    """

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self._limit = limit
        self._cond = threading.Condition()
        self._chunks: deque[memoryview] = deque()
        self._queued = 0
        self._eof = False
        self._aborted: str | None = None
        self._detached = False
        self._token = trio.lowlevel.current_trio_token()
        self._room = trio.Event()

    # -- the trio side -------------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        """Queue ``data``, waiting (without blocking the loop) while the pipe is full."""
        if not data:
            return
        while True:
            with self._cond:
                if self._eof or self._aborted is not None:
                    raise FailedPrecondition("write to a closed pipe")
                if self._detached:
                    return
                if self._queued < self._limit:
                    self._chunks.append(memoryview(data))
                    self._queued += len(data)
                    self._cond.notify()
                    return
                self._room = room = trio.Event()
            await room.wait()

    def close(self) -> None:
        """No more data: the reader sees end of file once it has read what is queued."""
        with self._cond:
            self._eof = True
            self._cond.notify()

    def abort(self, why: str) -> None:
        """The data will never be complete: the reader raises ``PipeAborted(why)``."""
        with self._cond:
            if self._eof:
                return  # every byte is there: the reader finishes normally
            self._aborted = why
            self._chunks.clear()
            self._queued = 0
            self._cond.notify()

    # -- the thread side -----------------------------------------------------------------

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all that is left if ``n < 0``); ``b""`` only at end of data."""
        with self._cond:
            if n < 0:
                while not self._eof and self._aborted is None and not self._detached:
                    self._cond.wait()
            else:
                while not (self._chunks or self._eof or self._detached) and self._aborted is None:
                    self._cond.wait()
            if self._aborted is not None:
                raise PipeAborted(self._aborted)
            if self._detached:
                raise PipeAborted("the reader stopped reading")
            data = self._take(n)
            room = self._room
        if data:
            self._wake(room)
        return data

    def detach(self) -> None:
        """The reader stops reading: drop what is queued and whatever comes later. A read
        blocked in another thread of the reader's (its read-ahead) raises ``PipeAborted``."""
        with self._cond:
            self._detached = True
            self._chunks.clear()
            self._queued = 0
            self._cond.notify_all()
            room = self._room
        self._wake(room)

    def _take(self, n: int) -> bytes:
        out = bytearray()
        while self._chunks and (n < 0 or len(out) < n):
            head = self._chunks[0]
            want = len(head) if n < 0 else min(len(head), n - len(out))
            out += head[:want]
            if want == len(head):
                self._chunks.popleft()
            else:
                self._chunks[0] = head[want:]
        self._queued -= len(out)
        return bytes(out)

    def _wake(self, room: trio.Event) -> None:
        """Set the writer's event from this thread (trio objects belong to the loop)."""
        with contextlib.suppress(trio.RunFinishedError):  # the pull is over: nobody waits
            self._token.run_sync_soon(room.set)
