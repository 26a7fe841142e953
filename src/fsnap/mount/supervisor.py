"""The supervisor: a small parent process that owns one mount's life and restarts its
serving process when that dies.

``python -m fsnap.mount.supervisor SPEC_JSON READY_FD`` is what the manager spawns (or
``- READY_FD``, started while ``mount --pull`` pulls, the spec then on stdin: ``main``). It
imports the server's code once (pyfuse3, trio, the tree; about 30 MB, shared copy-on-write
with its server), forks the server (``fsnap.mount.server.run``; the supervisor never opens
the store, so no LMDB environment crosses the fork), passes its readiness line on to
READY_FD, and waits. When the server exits it looks at the mount point:

- no fsnap mount there any more (``fsnap umount``, ``fusermount3 -u``): the mount ended,
  the supervisor drops the record (if still ours) and exits;
- the mount is still there: the server died under it (crash, OOM kill, SIGKILL) and the
  kernel answers ENOTCONN there. The supervisor detaches the dead connection (lazy
  unmount, so processes still holding files or a cwd on it keep their ENOTCONN and nobody
  else sees it) and forks a fresh server on the same mount point. Forking from the
  already-imported supervisor is what makes that fast: measured on a 2-core machine at
  load 13, a new interpreter needed 1.2-1.7 s until ``ls`` answered again (2-3 s just to
  import trio and pyfuse3 there), the fork 0.15-0.25 s (restart itself 0.10-0.17 s).
  A writable mount comes back on the same active snapshot: every write the old server
  acknowledged is already in the snapshot's directory or its index (the server keeps no
  dirty state of its own), and ``writable_fs`` rebuilds the tree from them and clears the
  work directory of half-done copy-ups.
- more than ``MAX_RESTARTS`` restarts within ``RESTART_WINDOW`` seconds: it gives up,
  leaves the dead mount in place (ENOTCONN says more than a silently empty directory),
  records why (``fsnap mounts`` shows ``failed``) and exits; ``fsnap umount`` cleans up.

SIGTERM/SIGINT/SIGHUP stop the server (which unmounts) and the supervisor with it.

Could the FUSE connection itself survive the server instead (hand /dev/fuse to a new
process, so that even open files and cwds keep working)? The kernel side allows it: a
connection lives while any process holds its /dev/fuse descriptor, and libfuse's
``fuse_session_mount`` adopts an already open descriptor given as ``/dev/fd/N``, so the
supervisor could open /dev/fuse, mount with it, and pass it to each server. What stops it
is the INIT handshake and the state behind it: the kernel sends FUSE_INIT once per
connection, libfuse's dispatcher answers EIO to every request that arrives before its
session has seen INIT (``se->got_init``), and pyfuse3 3.5 (``pyfuse3.init`` ->
``fuse_session_new`` + ``fuse_session_mount``) offers no way to start a session as
already initialised. Even past that, the new server would have to reproduce the old one's
node ids, lookup counts and open file handles, which the kernel keeps referring to; and
while the supervisor held the descriptor of a dead server, requests in flight would hang
instead of failing (until the connection is aborted through
/sys/fs/fuse/connections/N/abort). Linux 6.9's FUSE_NOTIFY_RESEND (re-queue requests in
flight for a new server) exists for exactly this kind of failover, but neither libfuse
3.14/3.17's session API nor pyfuse3 exposes it. So each restart is a new connection on
the same mount point.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from fsnap import logs
from fsnap.errors import FsnapError, InvalidArgument, Unavailable
from fsnap.lazy import access
from fsnap.mount import daemon, manager, records, server
from fsnap.mount.spec import MountSpec

MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
# A server that does not say it is ready in this long is killed and counted as a death.
START_TIMEOUT = 60.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

log = logging.getLogger("fsnap.mount.supervisor")  # (also when run as __main__)


class Supervisor:
    """Starts, watches and restarts the server of one mount (see the module docstring)."""

    def __init__(self, spec: MountSpec) -> None:
        self.spec = spec
        self.mountpoint = spec.mountpoint
        self.record = Path(spec.state) if spec.state else None
        self.server = 0
        self.stopping = False
        self.restarts: collections.deque[float] = collections.deque()
        self._close_in_child: list[int] = []

    def run(self, ready_fd: int) -> int:
        """Serve until the mount ends or is given up; the first start's readiness line (or
        error) goes to ``ready_fd``."""
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._stop)
        self._close_in_child.append(ready_fd)
        line = self._start()
        if line == "ok":
            self._note(server=self.server, restarts=0)  # claims the record: pid is ours
        try:
            os.write(ready_fd, (line + "\n").encode())
        finally:
            os.close(ready_fd)
            self._close_in_child.remove(ready_fd)
        if line != "ok":
            return 1
        while True:
            status = self._wait()
            if self.stopping or not self._still_mounted():
                break
            if not self._restart(status):
                return 1
        if self._still_mounted():  # a stop signal the server did not live to handle
            manager.detach(self.mountpoint)
        self._forget()
        return 0

    # -- one server ----------------------------------------------------------------------

    def _start(self) -> str:
        """Fork a server and return its readiness line (``ok`` or ``error ...``)."""
        read_fd, write_fd = os.pipe()
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            self._serve_in_child(read_fd, write_fd)
        self.server = pid
        os.close(write_fd)
        try:
            line = manager.read_ready(read_fd, START_TIMEOUT)
        except Unavailable:
            line = ""
        finally:
            os.close(read_fd)
        if line != "ok":
            self._kill_server()
        return line or "error 10 the mount daemon exited before mounting"

    def _serve_in_child(self, read_fd: int, write_fd: int) -> NoReturn:
        """The forked server: default signal dispositions, none of the supervisor's pipes,
        then ``server.run``; never returns into the supervisor's code."""
        code = 1
        try:
            for sig in STOP_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            for fd in (read_fd, *self._close_in_child):
                os.close(fd)
            code = server.run(self.spec, write_fd)
        except BaseException:  # noqa: BLE001 - the child must reach os._exit, whatever
            log.exception("server %d failed", os.getpid())
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def _wait(self) -> str:
        """Until the server exits; how it ended, for the log and the record."""
        try:
            _, status = os.waitpid(self.server, 0)  # a signal's EINTR is retried (PEP 475)
        except ChildProcessError:
            return "vanished"
        code = os.waitstatus_to_exitcode(status)
        return f"killed by signal {-code}" if code < 0 else f"exited with status {code}"

    def _kill_server(self) -> None:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(self.server, signal.SIGKILL)
            os.waitpid(self.server, 0)

    def _stop(self, signum: int, _frame: object) -> None:
        """A signal to the supervisor: the mount ends (the server unmounts on SIGTERM)."""
        self.stopping = True
        if self.server:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.server, signal.SIGTERM)

    # -- restarting ------------------------------------------------------------------------

    def _restart(self, status: str) -> bool:
        """Replace a dead server; False once it is given up on."""
        now = time.monotonic()
        while self.restarts and now - self.restarts[0] > RESTART_WINDOW:
            self.restarts.popleft()
        log.warning("server %d %s under %s", self.server, status, self.mountpoint)
        if len(self.restarts) >= MAX_RESTARTS:
            reason = (
                f"gave up: the server died {len(self.restarts) + 1} times within "
                f"{RESTART_WINDOW:.0f} s (last: {status})"
            )
            log.error("%s", reason)
            self._note(failure=reason, server=0)
            return False
        self.restarts.append(now)
        manager.detach(self.mountpoint)
        line = self._start()
        if line != "ok":
            log.error("restart failed: %s", line)
            return self._restart(f"failed to start again ({line})")
        total = self._count_restart()
        log.info(
            "restarted in %.2f s: server %d serves %s (restart %d)",
            time.monotonic() - now,
            self.server,
            self.mountpoint,
            total,
        )
        return True

    def _still_mounted(self) -> bool:
        return records.mounted_points().get(self.mountpoint) == records.FSTYPE

    # -- the record --------------------------------------------------------------------------

    def _count_restart(self) -> int:
        info = records.read_record(self.record) if self.record else None
        total = (info.restarts if info else 0) + 1
        self._note(server=self.server, restarts=total)
        return total

    def _note(self, **changes: Any) -> None:
        if self.record is not None:
            records.update_record(self.record, os.getpid(), **changes)

    def _forget(self) -> None:
        if self.record is not None:
            records.forget_record(self.record, os.getpid())


def main(argv: list[str]) -> int:
    """``SPEC_JSON READY_FD``: a spec that does not load is reported on READY_FD.

    ``- READY_FD [lazy]``: started ahead of the spec (``fsnap.mount.manager.Launched``),
    which comes as the first line of stdin once ``fsnap mount --pull`` has pulled; an
    empty stdin means no mount (exit 0). Meanwhile (``lazy``) the lazy mount's fetch
    code is imported, so that the forked server finds it loaded."""
    text = argv[0]
    if text == "-":
        if argv[2:] == ["lazy"]:
            import fsnap.lazy.fetch  # imported while the pull runs
        text = sys.stdin.readline()
        if not text:
            return 0
    try:
        spec = MountSpec.from_json(text)
    except FsnapError as exc:
        daemon.pipe_reporter(int(argv[1]))(exc)
        return 1
    try:
        access.give(_read_access())
    except FsnapError as exc:
        daemon.pipe_reporter(int(argv[1]))(exc)
        return 1
    logs.configure(spec.log_level, sys.stdout, service=True)
    log.info("supervising %s", spec.mountpoint)
    if spec.writable:
        import fsnap.mount.rwfs  # noqa: F401 - imported once here, not in every server
    return Supervisor(spec).run(int(argv[1]))


def _read_access() -> access.RegistryAccess | None:
    """The registry options ``fsnap mount`` wrote to our stdin (``fsnap.lazy.access``)."""
    text = sys.stdin.read(access.MAX_ACCESS_JSON + 1)
    if len(text) > access.MAX_ACCESS_JSON:
        raise InvalidArgument("registry access on stdin: too long")
    return access.RegistryAccess.from_json(text) if text else None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
