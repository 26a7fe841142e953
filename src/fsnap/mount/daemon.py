"""The FUSE daemon's library: build the file system a ``MountSpec`` names and serve it
until unmounted.

``serve`` mounts and runs the trio loop; it reports readiness through a ``Ready``
callback: ``pipe_reporter`` writes the one line a spawned server owes its supervisor
(``ok`` once the mount is live, or ``error <exit code> <message>`` so the CLI can print
why it failed). The process around it is ``fsnap.mount.server`` (which opens the store);
``fsnap mount --foreground`` calls ``serve`` with the CLI's own store handle instead
(``fsnap.mount.manager``), and ``fsnap-overlay`` with bare directories. SIGTERM/SIGINT
unmount.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pyfuse3
import trio

from fsnap.errors import FsnapError, Unavailable
from fsnap.labels import LAZY_LABEL
from fsnap.mount import loop, records, source, stats, treecache
from fsnap.mount.fs import MergedFS, TreeFS
from fsnap.mount.idshift import IdShift
from fsnap.mount.spec import MountSpec
from fsnap.mount.tree import MergedTree

if TYPE_CHECKING:
    from fsnap.mount.stores import MountStores
    from fsnap.mount.union import Union

Ready = Callable[[FsnapError | None], None]

log = logging.getLogger("fsnap.mount.daemon")  # (also when run as __main__)


def build_fs(spec: MountSpec, stores: MountStores) -> TreeFS:
    """The file system a spec names, with its owners shifted if ``shift_ids`` says so."""
    fs = _build_fs(spec, stores)
    if spec.shift_ids:
        fs.ids = IdShift(*spec.shift_ids)
    return fs


def _build_fs(spec: MountSpec, stores: MountStores) -> TreeFS:
    """The file system a spec names: bare layer directories, a snapshot's chain read-only,
    or (``writable``) an active snapshot over its parents."""
    if spec.layers:
        return MergedFS(MergedTree.build(source.dir_layers(spec.layers)), spec.provenance)
    chain = stores.snapshots.chain(spec.snapshot)
    lazy = any(LAZY_LABEL in info.labels for info in chain)
    saves: list[Callable[[], None]] = []
    fs: TreeFS
    union: Union | None = None
    if spec.writable:
        from fsnap.mount.rwfs import writable_fs  # read-only mounts need none of it

        privileged = False if spec.index_metadata else None
        writable = writable_fs(stores.snapshots, spec.snapshot, privileged)
        fs, union = writable, writable.union
        chain = chain[:-1]
    else:
        tree = treecache.merged_tree(stores.snapshots, spec.snapshot, saves if lazy else None)
        fs = MergedFS(tree, spec.provenance)
    if lazy:
        from fsnap.lazy.fetch import LazyFiles

        fs.lazy_files = LazyFiles.for_chain(stores.snapshots, chain, stores.db, stores.content)
        fs.lazy_background = not spec.no_background_fetch
        if fs.lazy_files is not None:
            for job in saves:  # the tree cache: once the first reads are over
                fs.lazy_files.when_quiet(job)
        if union is not None:
            union.lazy_files = fs.lazy_files
    return fs


def serve(
    mountpoint: str, options: Sequence[str], ready: Ready, build: Callable[[], TreeFS]
) -> None:
    """Build the file system, mount it at ``mountpoint`` with FUSE ``options``, serve
    until unmounted or signalled; report readiness.

    ``build`` reads the layers: in a spawned daemon with its own store handle, in
    ``--foreground`` with the CLI's (one LMDB environment per process)."""
    try:
        fs = build()
        try:
            pyfuse3.init(fs, mountpoint, set(options))
        except RuntimeError as exc:
            raise Unavailable(f"cannot mount {mountpoint}: {exc}") from None
    except FsnapError as exc:
        ready(exc)
        return
    counts = stats.from_environment(fs)
    tasks = fs.serving_tasks()
    try:
        with loop.serving(tasks[1]) as waits:
            if counts is not None:
                counts.loop = waits
            trio.run(_run, ready, fs, tasks, counts)
    finally:
        pyfuse3.close(unmount=True)
        if counts is not None:
            counts.write()


def release_snapshot(spec: MountSpec, stores: MountStores) -> None:
    """A writable mount ended: its snapshot may be committed again (if it is still ours)."""
    if not spec.writable:
        return
    key = spec.snapshot
    try:
        if stores.writable.at(key) == spec.mountpoint:
            stores.writable.set(key, None)
    except FsnapError:
        pass


async def _run(
    ready: Ready, fs: TreeFS, tasks: tuple[int, int], counts: stats.RequestCounts | None
) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
        nursery.start_soon(fs.background)
        if counts is not None:  # (listening before the mount is live: SIGUSR1 kills)
            await nursery.start(counts.report_on_signal)
        ready(None)
        await pyfuse3.main(min_tasks=tasks[0], max_tasks=tasks[1])
        nursery.cancel_scope.cancel()


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for _ in signals:
            pyfuse3.terminate()
            return


def pipe_reporter(fd: int) -> Ready:
    """A ``Ready`` that writes the one readiness line to ``fd`` and closes it."""

    def report(error: FsnapError | None) -> None:
        line = "ok\n" if error is None else f"error {error.exit_code} {error}\n"
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    return report


def forget_state(path: str) -> None:
    """Unmounted from outside (``fusermount3 -u``, or a signal to a ``--foreground`` mount):
    drop the record if this process owns it (a supervised server does not: its supervisor
    does)."""
    if path:
        records.forget_record(Path(path), os.getpid())
