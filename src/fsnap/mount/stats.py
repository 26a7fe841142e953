"""Requests per FUSE operation: what a benchmark compares with another file system.

With ``FSNAP_REQUEST_COUNTS=FILE`` in the environment of ``fsnap mount`` (its supervisor
and server inherit it), the server counts the requests it serves by operation and writes
the running totals as JSON to FILE on SIGUSR1 and at unmount, atomically (a reader never
sees half a file). A benchmark reads the file before and after a phase and subtracts
(``scripts/bench-mount --requests``). Counting wraps the operation methods of the one
instance being served; without the variable nothing is wrapped and serving pays nothing.
"""

from __future__ import annotations

import collections
import functools
import inspect
import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyfuse3
import trio

ENV = "FSNAP_REQUEST_COUNTS"
# Beside the operations: requests the blocking loop read without a trio round, and its waits
# through trio (``fsnap.mount.loop``).
LOOP_DIRECT = "(loop) direct"
LOOP_ROUNDS = "(loop) via trio"
OPERATIONS = tuple(
    name for name, value in vars(pyfuse3.Operations).items() if inspect.iscoroutinefunction(value)
)

if TYPE_CHECKING:
    from fsnap.mount.loop import BlockingTrio

log = logging.getLogger("fsnap.mount.stats")


class RequestCounts:
    """The requests one served file system answered, by operation, written to ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.counts: collections.Counter[str] = collections.Counter()
        # The blocking request loop, if the server runs one: its waits are written too.
        self.loop: BlockingTrio | None = None

    def wrap(self, fs: pyfuse3.Operations) -> None:
        """Count every operation ``fs`` serves (instance attributes shadow its methods)."""
        for name in OPERATIONS:
            setattr(fs, name, self._counted(name, getattr(fs, name)))

    def _counted(
        self, name: str, method: Callable[..., Awaitable[Any]]
    ) -> Callable[..., Awaitable[Any]]:
        counts = self.counts

        @functools.wraps(method)
        async def counted(*args: Any) -> Any:
            counts[name] += 1
            return await method(*args)

        return counted

    def write(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        totals = dict(self.counts)
        if self.loop is not None:
            totals[LOOP_DIRECT] = self.loop.direct
            totals[LOOP_ROUNDS] = self.loop.rounds
        tmp.write_text(json.dumps(dict(sorted(totals.items()))))
        os.replace(tmp, self.path)

    async def report_on_signal(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Write the totals on each SIGUSR1, for the mount's life (started: listening)."""
        with trio.open_signal_receiver(signal.SIGUSR1) as signals:
            task_status.started()
            async for _ in signals:
                self.write()


def from_environment(fs: pyfuse3.Operations) -> RequestCounts | None:
    """Count ``fs``'s requests if ``FSNAP_REQUEST_COUNTS`` names a file, else None."""
    where = os.environ.get(ENV)
    if not where:
        return None
    counts = RequestCounts(Path(where))
    counts.wrap(fs)
    log.info("counting requests into %s (SIGUSR1 writes them)", where)
    return counts
