"""A mount's server process: open the store, build the file system, serve it.

``run(spec, ready_fd)`` is what the mount's supervisor (``fsnap.mount.supervisor``) runs
in a forked child, again after each death (the supervisor never opens the store, so no
LMDB handle crosses the fork); ``python -m fsnap.mount.server SPEC_JSON READY_FD`` runs it
stand-alone (the spec is JSON only on those command lines: ``fsnap.mount.spec``). Both log
through ``logging`` at the spec's level to stdout, which is the mount's log file. A
writable mount keeps its store handle for its whole life (it records index overrides).
This is the one mount module that opens a ``Client``: the library below it
(``fsnap.mount.daemon``) takes the stores it is given.
"""

from __future__ import annotations

import gc
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fsnap import logs
from fsnap.client import Client
from fsnap.errors import FsnapError
from fsnap.mount.daemon import build_fs, forget_state, pipe_reporter, release_snapshot, serve
from fsnap.mount.spec import MountSpec

if TYPE_CHECKING:
    from fsnap.mount.fs import TreeFS

log = logging.getLogger("fsnap.mount.server")  # (also when run as __main__)


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
