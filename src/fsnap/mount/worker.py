"""Run one blocking call in a worker thread, as cheaply as trio allows.

The writable mount's reads (``fs.read_fd``, ``fsnap.mount.rwfs``) wait for the disk off
the trio loop: its handlers run in several pyfuse3 tasks. (The read-only mount reads on the
loop itself: there the hand-off cost more than the read, see ``fs.MergedFS``.) With
``trio.to_thread.run_sync`` every such hop also pays for a capacity limiter, context
copying and ``trio.from_thread`` plumbing, none of which a ``pread`` needs; the hop itself
was most of the daemon's CPU time in a cold ``tar`` when read-only mounts still used it.
Here a call goes straight to trio's thread cache and its result comes back with one
``run_sync_soon``.

The number of calls in flight needs no limiter of its own: pyfuse3 serves at most
``max_tasks`` requests at once, and each waits for at most one call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import trio

if TYPE_CHECKING:
    import outcome

T = TypeVar("T")


def _not_abortable(_: object) -> trio.lowlevel.Abort:
    """A started system call cannot be taken back: a cancelled caller waits for it."""
    return trio.lowlevel.Abort.FAILED


async def run_blocking(fn: Callable[[], T]) -> T:
    """``fn()`` in a worker thread; its result or exception, back on the loop."""
    task = trio.lowlevel.current_task()
    token = trio.lowlevel.current_trio_token()

    def deliver(result: outcome.Outcome[T]) -> None:
        token.run_sync_soon(trio.lowlevel.reschedule, task, result)

    trio.lowlevel.start_thread_soon(fn, deliver)
    value: T = await trio.lowlevel.wait_task_rescheduled(_not_abortable)
    return value
