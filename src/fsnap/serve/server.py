"""``fsnap serve``: containerd's snapshots API on a Unix socket until SIGTERM/SIGINT.

The socket is created mode 0600 in a directory of mode 0700 that the server creates when
missing (whoever can talk to it can create and remove snapshots). A socket that answers
is another live server: refused (Busy), never stolen. A socket file nobody answers on is
a crashed server's leftover and is replaced; anything else there (a file, a symlink) is
refused, never removed.

Shutdown: the first SIGTERM/SIGINT stops accepting calls and lets calls in flight finish
(up to ``GRACE`` seconds), then the socket file is removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc

from fsnap.errors import Busy, InvalidArgument
from fsnap.serve.api import snapshots_pb2_grpc
from fsnap.serve.backend import Backend
from fsnap.serve.service import SnapshotsService
from fsnap.snapshots.snapshotter import LocalSnapshotter

log = logging.getLogger(__name__)

GRACE = 10.0  # seconds calls in flight get to finish on shutdown
WORKERS = 8
MAX_ADDRESS = 107  # sun_path holds 108 bytes with its NUL


def default_address() -> Path:
    """/run/fsnap/fsnap.sock for root, else under ``$XDG_RUNTIME_DIR``."""
    if os.geteuid() == 0:
        return Path("/run/fsnap/fsnap.sock")
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.geteuid()}"
    return Path(runtime) / "fsnap" / "fsnap.sock"


def serve(
    snapshots: LocalSnapshotter,
    address: Path,
    ready: Callable[[Path], None] = lambda _: None,
    stop: threading.Event | None = None,
) -> None:
    """Serve until ``stop`` is set (or SIGTERM/SIGINT in the main thread)."""
    stop = stop or threading.Event()
    with _listening(address) as target:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=WORKERS))
        service = SnapshotsService(Backend(snapshots))
        snapshots_pb2_grpc.add_SnapshotsServicer_to_server(service, server)  # type: ignore[no-untyped-call]
        with _umask(0o177):
            server.add_insecure_port(target)
        server.start()
        log.info("serving containerd's snapshots API on %s", address)
        with _stopping_on_signals(stop):
            ready(address)
            stop.wait()
        log.info("shutting down: letting calls in flight finish")
        server.stop(GRACE).wait()


@contextlib.contextmanager
def _listening(address: Path) -> Iterator[str]:
    if len(os.fsencode(address)) > MAX_ADDRESS:
        raise InvalidArgument(f"socket path too long ({MAX_ADDRESS} bytes at most): {address}")
    address.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if address.exists() or address.is_symlink():
        if _answers(address):
            raise Busy(f"{address} is in use by a running server")
        if not stat.S_ISSOCK(address.lstat().st_mode):
            raise InvalidArgument(f"{address} exists and is not a socket: not replaced")
        address.unlink()
    try:
        yield f"unix:{address}"
    finally:
        with contextlib.suppress(FileNotFoundError):
            address.unlink()


def _answers(address: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(address))
        except OSError:
            return False
        return True


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@contextlib.contextmanager
def _stopping_on_signals(stop: threading.Event) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
