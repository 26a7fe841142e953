"""pyfuse3's request loop without a trip through trio per request, for a server whose
handlers never wait (one pyfuse3 task: ``MergedFS.serving_tasks``).

pyfuse3's ``_session_loop`` waits for each request with ``trio.lowlevel.wait_readable`` on
/dev/fuse behind a ``trio.Lock``: every request costs trio's scheduler a full round
(``epoll_ctl``, two ``epoll_wait``, the lock's checkpoint, rescheduling the task), about
half of what a request costs a pyfuse3 server in CPU (docs/benchmarks.md, "The pyfuse3
floor"). libfuse's own single-threaded loop (fuse-overlayfs's) blocks in ``read`` instead.

pyfuse3 looks those names up on its module attribute ``pyfuse3.trio``, which it lets a
caller replace (``pyfuse3.asyncio.enable`` swaps in an asyncio shim the same way).
``serving(1)`` swaps in ``BlockingTrio`` for the duration: everything is trio's, except

- ``lowlevel.wait_readable`` first blocks the thread in ``poll`` on /dev/fuse for up to
  ``IDLE_SECONDS``: a request that comes in the meantime is read at once, with no event
  loop round. After ``IDLE_SECONDS`` without a request, or after ``FAIR_REQUESTS`` requests
  in a row, it waits through trio as before, so trio's other tasks (signal receivers, the
  request counter's SIGUSR1) run at least that often: a signal is handled within
  ``IDLE_SECONDS`` of arriving when idle, within ``FAIR_REQUESTS`` requests when busy;
- ``Lock`` is a lock that never waits: with one task there is nobody to wait for.

Only for one serving task whose handlers never await: a blocked thread serves nothing
else, which is what fuse-overlayfs does too (and what ``MergedFS`` does already for reads
that miss the page cache).
"""

from __future__ import annotations

import contextlib
import logging
import select
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pyfuse3
import trio

log = logging.getLogger("fsnap.mount.loop")

# How long the loop may block in poll for the next request before giving trio the thread.
IDLE_SECONDS = 0.05
# Requests served back to back before trio gets a round anyway.
FAIR_REQUESTS = 64


class _FreeLock:
    """An async lock for one task: acquiring it never waits (and never checkpoints)."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


class _Lowlevel:
    """``trio.lowlevel`` with another ``wait_readable``."""

    def __init__(self, wait_readable: Callable[[Any], Awaitable[None]]) -> None:
        self.wait_readable = wait_readable

    def __getattr__(self, name: str) -> Any:
        return getattr(trio.lowlevel, name)


class BlockingTrio:
    """The ``trio`` pyfuse3 sees while ``serving``: trio, but waiting for /dev/fuse by
    blocking in ``poll`` first (see the module docstring). ``rounds`` counts the waits that
    went through trio, ``direct`` the requests read without it (for tests and benches).
    Every other name is trio's (a later pyfuse3 may use more of it)."""

    def __init__(self) -> None:
        self._poll = select.poll()
        self._fd = -1  # pyfuse3's /dev/fuse descriptor, the one it waits for
        self._streak = 0
        self._idle_ms = IDLE_SECONDS * 1000
        self.direct = 0
        self.rounds = 0
        self.Lock = _FreeLock
        self.lowlevel = _Lowlevel(self.wait_readable)

    def __getattr__(self, name: str) -> Any:
        return getattr(trio, name)

    async def wait_readable(self, fd: Any) -> None:
        if fd != self._fd:
            self._poll.register(fd, select.POLLIN)
            self._fd = fd
        if self._streak < FAIR_REQUESTS and self._poll.poll(self._idle_ms):
            self._streak += 1
            self.direct += 1
            return
        self._streak = 0
        self.rounds += 1
        await trio.lowlevel.wait_readable(fd)


@contextlib.contextmanager
def serving(max_tasks: int) -> Iterator[BlockingTrio | None]:
    """Inside the block, pyfuse3 waits for requests (on its /dev/fuse descriptor, the only
    one it waits for) through ``BlockingTrio`` if it serves with one task (``max_tasks``
    1), and yields it; else, or if this pyfuse3 has no ``trio`` attribute to replace (the
    log says so), through trio as it always does, yielding None."""
    if max_tasks != 1:
        yield None
        return
    if getattr(pyfuse3, "trio", None) is not trio:
        log.info("pyfuse3 %s: no trio module to replace; requests wait in trio", _version())
        yield None
        return
    shim = BlockingTrio()
    pyfuse3.trio = shim  # type: ignore[attr-defined]
    try:
        yield shim
    finally:
        pyfuse3.trio = trio  # type: ignore[attr-defined]


def _version() -> str:
    return str(getattr(pyfuse3, "__version__", "?"))
