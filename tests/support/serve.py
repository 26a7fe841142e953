"""``fsnap serve`` as a process, containerd pointed at it, and containerd's mounts mounted.

``run_serve`` starts ``fsnap serve --log-level debug`` on a socket under a temporary
directory and waits for its "listening" line; ``stop()`` sends SIGTERM (the server's own
shutdown path) and waits. ``mounted`` mounts what a snapshotter's Mounts returned, the way
containerd does (bind mounts with ``mount``, ``fuse3.*`` types through their program),
and unmounts it after, also when the test fails.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from fsnap.serve.backend import OVERLAY_TYPE, Mount
from support.proc import stop

BIN = Path(sys.executable).parent
FSNAP_OVERLAY = BIN / "fsnap-overlay"
STARTUP_TIMEOUT = 30.0


@dataclass
class Served:
    root: Path
    address: Path
    log: Path
    process: subprocess.Popen[bytes]

    def stop(self) -> int:
        return stop(self.process, timeout=30)

    def calls(self, method: str) -> list[str]:
        """The debug log lines of ``method`` calls so far."""
        return [line for line in self.log.read_text().splitlines() if f"service: {method} " in line]


def start_serve(root: Path, address: Path, log: Path) -> Served:
    argv = [
        str(BIN / "fsnap"),
        "--root",
        str(root),
        "serve",
        "--address",
        str(address),
        "--log-level",
        "debug",
    ]
    with open(log, "ab") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL)
    served = Served(root, address, log, process)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while "listening on" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            served.stop()
            raise AssertionError(f"fsnap serve did not start:\n{log.read_text()}")
        time.sleep(0.05)
    return served


@contextlib.contextmanager
def run_serve(root: Path, address: Path, log: Path) -> Iterator[Served]:
    served = start_serve(root, address, log)
    try:
        yield served
    finally:
        served.stop()


def containerd_env() -> dict[str, str]:
    """containerd's environment: mount.fuse3 (/sbin) and this venv's fsnap-overlay on PATH."""
    path = f"{BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return {"PATH": path, "HOME": os.environ.get("HOME", "/root")}


def proxy_config(address: Path) -> str:
    return f'[proxy_plugins.fsnap]\n  type = "snapshot"\n  address = "{address}"'


@contextlib.contextmanager
def mounted(mounts: Sequence[Mount], target: Path) -> Iterator[Path]:
    """Mount containerd ``mounts`` (one of them, as every fsnap answer is) at ``target``."""
    assert len(mounts) == 1, mounts
    mount = mounts[0]
    target.mkdir(parents=True, exist_ok=True)
    if mount.type == "bind":
        argv = ["mount", "--bind", mount.source, str(target)]
    else:
        assert mount.type == OVERLAY_TYPE, mount
        argv = [str(FSNAP_OVERLAY), mount.source, str(target), "-o", ",".join(mount.options)]
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    try:
        if mount.type == "bind" and "ro" in mount.options:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)
        yield target
    finally:
        subprocess.run(["umount", str(target)], capture_output=True, check=False)
        if os.path.ismount(target):
            subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)
