"""``scripts/bench-mount --requests``: how many FUSE requests each phase of the mount
benchmark costs, fsnap beside the pyfuse3 floor (``benchlib.nullfs``) and fuse-overlayfs
(issue 17: where per-request cost matters).

Each phase runs once per mount, untimed, under ``strace -c -f`` attached to the serving
process: all three are libfuse low-level servers that read a request from /dev/fuse with
``read`` and answer it with one ``writev`` (FORGET and BATCH_FORGET get no answer), so
the ``writev`` count is the number of answered requests for either, and the other calls
show what serving a request costs in system calls. fsnap's server and the floor also count
requests by operation (``FSNAP_REQUEST_COUNTS``, ``fsnap.mount.stats``), SIGUSR1 before and
after the phase. strace slows its target a lot; no figure here is a time.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from benchlib.interleaved import IMPORTS
from benchlib.mounts import FloorMount, FsnapMount, FuseOverlayMount, Mount, View
from benchlib.timing import drop_caches, table


def phases(mnt: Path) -> list[tuple[str, Callable[[], object]]]:
    tar = f"tar -cf - -C {mnt} . | cat > /dev/null"
    chroot = " && ".join([f"chroot {mnt} python3 -c '{IMPORTS}'"] * 5)

    def cold(cmd: str) -> Callable[[], object]:
        def run() -> object:
            drop_caches()
            return subprocess.run(cmd, shell=True, check=True, capture_output=True)

        return run

    def warm(cmd: str) -> Callable[[], object]:
        return lambda: subprocess.run(cmd, shell=True, check=True, capture_output=True)

    return [
        ("find, cold", cold(f"find {mnt} > /dev/null")),
        ("tar, cold", cold(tar)),
        ("tar, warm", warm(tar)),
        ("chroot python3 x5", warm(chroot)),
    ]


@contextlib.contextmanager
def straced(pid: int, out: Path) -> Iterator[None]:
    """``strace -c -f`` attached to ``pid`` (and its threads) for the block."""
    tracer = subprocess.Popen(
        ["strace", "-c", "-f", "-o", str(out), "-p", str(pid)], stderr=subprocess.DEVNULL
    )
    time.sleep(1.0)  # attached to every thread before the phase starts
    try:
        yield
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=60)


def syscalls(summary: Path) -> dict[str, int]:
    """strace -c's table: syscall -> calls."""
    calls: dict[str, int] = {}
    for line in summary.read_text().splitlines():
        cols = line.split()
        if len(cols) >= 5 and cols[0][0].isdigit() and cols[3].isdigit() and cols[-1] != "total":
            calls[cols[-1]] = int(cols[3])
    return calls


def fsnap_counts(pid: int, path: Path) -> dict[str, int]:
    path.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 30
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the fsnap server wrote no request counts")
        time.sleep(0.05)
    counts: dict[str, int] = json.loads(path.read_text())
    return counts


def main_requests(work: Path, fsnap_root: Path, view: View) -> None:
    fsnap = FsnapMount(work, fsnap_root)
    floor = FloorMount(work)
    counts_file = work / "request-counts.json"
    fsnap.env = floor.env = {"FSNAP_REQUEST_COUNTS": str(counts_file)}
    kinds: list[Mount] = [fsnap, floor, FuseOverlayMount(work)]
    rows = [["phase", "mount", "answered (writev)", "reads of requests", "all syscalls", "top"]]
    by_op: list[list[str]] = [["phase", "mount", "requests by operation"]]
    for kind in kinds:
        counted = kind is fsnap or kind is floor
        mnt = work / f"mnt-req-{kind.name}"
        mnt.mkdir(exist_ok=True)
        drop_caches()
        kind.mount(view, mnt)
        try:
            for name, run in phases(mnt):
                trace = work / f"strace-{kind.name}-{name.replace(' ', '_')}.txt"
                before = fsnap_counts(kind.pid, counts_file) if counted else {}
                with straced(kind.pid, trace):
                    run()
                calls = syscalls(trace)
                top = sorted(calls.items(), key=lambda kv: -kv[1])[:4]
                rows.append(
                    [
                        name,
                        kind.name,
                        str(calls.get("writev", 0)),
                        str(calls.get("read", 0)),
                        str(sum(calls.values())),
                        ", ".join(f"{k} {v}" for k, v in top),
                    ]
                )
                if counted:
                    after = fsnap_counts(kind.pid, counts_file)
                    diff = {k: v - before.get(k, 0) for k, v in after.items()}
                    ops = sorted(((k, v) for k, v in diff.items() if v), key=lambda kv: -kv[1])
                    by_op.append([name, kind.name, ", ".join(f"{k} {v}" for k, v in ops)])
                print(f"{kind.name}: {name} counted", flush=True)
        finally:
            kind.umount(mnt)
    print("\nrequests per phase (strace -c -f on the serving process):\n" + table(rows))
    print("\n" + table(by_op))
