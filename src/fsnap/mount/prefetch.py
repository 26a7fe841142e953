"""Warm the next files of a directory while a reader is busy with the current one.

Programs that read a whole tree (``tar``, ``cp -r``, a container's first start) open the
files of a directory one after another in listing order. Each first read of a cold file
waits for the disk twice (the lower file's inode, then its data) while the reader waits
for the daemon: measured on the benchmark image, a cold ``tar`` took 3.2-4.0 s with the
layer files on disk and 2.0-2.6 s with them already in the page cache. So when a file is
opened, the next few regular files of its directory are opened in a background thread and
their first pages requested (``POSIX_FADV_WILLNEED``, which queues the I/O without waiting
for it). By the time the reader gets there, the daemon can open the file and answer its
first read on the trio loop, without a worker-thread hop.

The cost is bounded: only files after one that was opened, at most ``AHEAD`` at a time,
at most ``WARM_BYTES`` of each, and a full queue drops requests instead of waiting.
``find``, ``stat`` and ``ls`` open no files, so they cause no prefetching at all.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable

import trio

from fsnap.mount.fastpath import open_source
from fsnap.mount.tree import Node
from fsnap.mount.worker import run_blocking

AHEAD = 8  # files after the opened one to warm
WARM_BYTES = 256 * 1024  # of each: about what the kernel's first read-ahead windows ask for
QUEUE = 16  # batches waiting for the warming thread; more are dropped


class Prefetcher:
    """Queues the files after each opened one; ``run`` warms them, one batch at a time."""

    def __init__(self) -> None:
        # inode numbers whose warming was asked for / whose inode and pages were requested
        self._asked: set[int] = set()
        self._warm: set[int] = set()
        self._send: trio.MemorySendChannel[list[Node]] | None = None
        # directory inode -> index after the name last opened in it
        self._next: dict[int, int] = {}

    def is_warm(self, node: Node) -> bool:
        """Was ``node``'s lower file opened recently (its lookup will not wait)?"""
        return node.ino in self._warm

    def opened(self, node: Node) -> None:
        """``node`` was opened: queue the regular files that follow it in its directory."""
        parent = node.parent
        if self._send is None or parent is None or parent.names is None:
            return
        names, children = parent.names, parent.children
        assert children is not None
        start = self._position(parent.ino, names, node.name)
        if start < 0:
            return
        batch = []
        for name in names[start : start + AHEAD]:
            child = children.get(name) if name is not None else None
            if child is None or child.source is None or child.size == 0:
                continue
            if child.ino not in self._asked:
                self._asked.add(child.ino)
                batch.append(child)
        if batch:
            try:
                self._send.send_nowait(batch)
            except trio.WouldBlock:
                self._asked.difference_update(child.ino for child in batch)

    def _position(self, directory: int, names: list[bytes | None], name: bytes) -> int:
        """The index after ``name`` in ``names``, or -1. A reader going through a directory
        opens its files in order, so the next one is usually right after the last found:
        checking there first keeps a large directory from costing a search per open."""
        hint = self._next.get(directory, 0)
        if hint < len(names) and names[hint] == name:
            found = hint
        else:
            try:
                found = names.index(name)
            except ValueError:
                return -1
        self._next[directory] = found + 1
        return found + 1

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Warm queued batches until cancelled (the mount's serving nursery owns this).
        Started with ``nursery.start``, it returns once ``opened`` queues work."""
        send, receive = trio.open_memory_channel[list[Node]](QUEUE)
        self._send = send
        task_status.started()
        async with receive:
            async for batch in receive:
                paths = [child.source for child in batch if child.source is not None]
                await run_blocking(functools.partial(_warm, paths))
                self._warm.update(child.ino for child in batch)


def _warm(paths: Iterable[str]) -> None:
    """Open each file (its inode is read now) and queue the read of its first pages."""
    for path in paths:
        try:
            fd = open_source(path)
        except OSError:
            continue  # gone or not ours to read: the reader will say
        try:
            os.posix_fadvise(fd, 0, WARM_BYTES, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)
