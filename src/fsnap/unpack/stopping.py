"""Stopping a layer being applied in a worker thread when its pull is cancelled.

trio cannot interrupt a thread: ``trio.to_thread.run_sync`` waits for it, so a Ctrl-C
during a pull waited for the layer being applied to finish (measured: 224 s after SIGINT
for a 500,000-entry layer, then a traceback). ``run_stoppable`` runs the applier with a
``threading.Event`` that a watcher task sets the moment the pulling task is cancelled; the
applier checks it before each tar member (``fsnap.archive.apply.apply_layer``), so it
stops within one member, not at the end of the layer (reading the blob is not enough: the
read-ahead thread may hold all of a small, highly compressed blob already). What it
staged is removed by its caller as after any failure.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import TypeVar

import trio

R = TypeVar("R")


async def run_stoppable(
    call: Callable[..., R],
    *,
    limiter: trio.CapacityLimiter,
    wake: Callable[[], None] | None = None,
) -> R:
    """``call(stop=stop)`` in a worker thread; a cancellation of this task sets ``stop`` at
    once (and calls ``wake``, for a read blocked on more data) instead of waiting for the
    thread. The thread's own error is raised as is (not in an exception group)."""
    stop = threading.Event()
    finished = threading.Event()
    failure: Exception | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_when_cancelled, stop, finished, wake)
        try:
            result = await trio.to_thread.run_sync(
                functools.partial(call, stop=stop), limiter=limiter
            )
        except Exception as exc:  # (a Cancelled leaves through the nursery as usual)
            failure = exc
        finished.set()
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return result


async def _stop_when_cancelled(
    stop: threading.Event, finished: threading.Event, wake: Callable[[], None] | None
) -> None:
    try:
        await trio.sleep_forever()
    finally:
        if not finished.is_set():
            stop.set()
            if wake is not None:
                wake()
