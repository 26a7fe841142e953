"""The FUSE daemon: one process per mount, serving a merged tree until unmounted.

``run(spec, ready_fd)`` is what the mount's supervisor (``fsnap.mount.supervisor``) runs
in a forked child, again after each death (the supervisor never opens the store, so no
LMDB handle crosses the fork); ``python -m fsnap.mount.daemon SPEC_JSON READY_FD`` runs it
stand-alone (the spec is JSON only on those command lines: ``fsnap.mount.spec``). Both log
through ``logging`` at the spec's level to stdout, which is the mount's log file. A
writable mount keeps its store handle for its whole life (it records index overrides).
It loads the layers, mounts, then writes one line to READY_FD: ``ok`` once the
mount is live, or ``error <exit code> <message>`` so the CLI can print why it failed.
SIGTERM/SIGINT unmount.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pyfuse3
import trio

from fsnap import logs
from fsnap.client import Client
from fsnap.errors import FsnapError, Unavailable
from fsnap.labels import LAZY_LABEL
from fsnap.mount import manager, source, treecache
from fsnap.mount.fs import MergedFS, TreeFS
from fsnap.mount.idshift import IdShift
from fsnap.mount.spec import MountSpec
from fsnap.mount.tree import MergedTree

if TYPE_CHECKING:
    from fsnap.mount.manager import MountStores
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
    fs: TreeFS
    union: Union | None = None
    if spec.writable:
        from fsnap.mount.rwfs import writable_fs  # read-only mounts need none of it

        privileged = False if spec.index_metadata else None
        writable = writable_fs(stores.snapshots, spec.snapshot, privileged)
        fs, union = writable, writable.union
        chain = chain[:-1]
    else:
        fs = MergedFS(treecache.merged_tree(stores.snapshots, spec.snapshot), spec.provenance)
    if any(LAZY_LABEL in info.labels for info in chain):
        from fsnap.lazy.fetch import LazyFiles

        fs.lazy_files = LazyFiles.for_chain(stores.snapshots, chain, stores.db, stores.content)
        fs.lazy_background = not spec.no_background_fetch
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
    try:
        trio.run(_run, ready, fs)
    finally:
        pyfuse3.close(unmount=True)


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


async def _run(ready: Ready, fs: TreeFS) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
        nursery.start_soon(fs.background)
        ready(None)
        await pyfuse3.main(min_tasks=2, max_tasks=16)
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
        manager.forget_record(Path(path), os.getpid())


def build_read_only(spec: MountSpec, client: Client) -> TreeFS:
    """Build the file system; a read-only one then lets go of what only the build needed.

    Its tree never changes again, so the store handle (and the index pages it mapped) is
    closed, and the tree's objects leave the garbage collector's generations
    (``gc.freeze``): serving allocates constantly, and a full collection would otherwise
    walk every node of a large tree again and again."""
    fs = build_fs(spec, client.mount_stores())
    if not spec.writable:
        if fs.lazy_files is None:  # a lazy mount records its fetches in the store
            client.close()
        gc.freeze()
    return fs


def main(argv: list[str]) -> int:
    try:
        spec = MountSpec.from_json(argv[0])
    except FsnapError as exc:
        pipe_reporter(int(argv[1]))(exc)
        return 1
    logs.configure(spec.log_level, sys.stdout, service=True)
    return run(spec, int(argv[1]))


def run(spec: MountSpec, ready_fd: int) -> int:
    """Serve ``spec`` until unmounted, reporting readiness on ``ready_fd``: the body of a
    daemon process (the supervisor runs it in a forked child, see its docstring)."""
    ready = pipe_reporter(ready_fd)
    log.info("serving %s", spec.mountpoint)
    log.debug("spec %s", spec)
    with Client(Path(spec.root)) as client:
        serve(spec.mountpoint, spec.options, ready, lambda: build_read_only(spec, client))
        if spec.writable:  # (a read-only server closed its store handle after the build)
            release_snapshot(spec, client.mount_stores())
    forget_state(spec.state)
    log.info("unmounted %s", spec.mountpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
