"""``scripts/bench-mount --profile``: where a Python FUSE server spends its CPU, per phase.

py-spy (``.venv/bin/py-spy``, from PyPI) samples the serving process during cold ``tar``,
warm ``tar`` and ``chroot python3`` x5, once per server: fsnap's and the pyfuse3 floor
(``benchlib.nullfs``). Only the thread holding the GIL is sampled (``--gil``): a thread
blocked in a system call (the loop in ``epoll_wait``, a worker in ``preadv``, an idle worker
waiting for work) has let it go, so the counts are the server's Python CPU time, which is
what a pyfuse3 server is short of; with ``--native`` the C frames of pyfuse3 and libfuse
are sampled too. The summary per phase: samples, then the functions
with the most samples of their own ("self") and in their stack ("total"). Sampling slows
the server a little; no figure here is a time to compare with the timed runs.
"""

from __future__ import annotations

import collections
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from benchlib import services
from benchlib.mounts import Mount, View
from benchlib.timing import drop_caches, table

PY_SPY = services.REPO / ".venv/bin/py-spy"
IMPORTS = "import json, email, http.client"
RATE = 250  # samples a second
TOP = 12
_LINE = re.compile(r"^(.*) (\d+)$")
_FRAME_LINE = re.compile(r":\d+\)$")


def phases(mnt: Path) -> list[tuple[str, Callable[[], object]]]:
    tar = f"tar -cf - -C {mnt} . | cat > /dev/null"
    chroot = " && ".join([f"chroot {mnt} python3 -c '{IMPORTS}'"] * 5)

    def run(cmd: str, cold: bool) -> Callable[[], object]:
        def go() -> object:
            if cold:
                drop_caches()
            return subprocess.run(cmd, shell=True, check=True, capture_output=True)

        return go

    return [
        ("tar, cold", run(tar, cold=True)),
        ("tar, warm", run(tar, cold=False)),
        ("chroot python3 x5", run(chroot, cold=False)),
    ]


def sampled(pid: int, out: Path, action: Callable[[], object], native: bool) -> float:
    """Run ``action`` with py-spy recording ``pid`` into ``out`` (raw, collapsed stacks);
    the seconds ``action`` took."""
    cmd = [
        str(PY_SPY),
        "record",
        "-p",
        str(pid),
        "-r",
        str(RATE),
        "-f",
        "raw",
        "-o",
        str(out),
        "--gil",
    ]
    if native:
        cmd.append("--native")
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached before the phase starts
    start = time.perf_counter()
    try:
        action()
    finally:
        took = time.perf_counter() - start
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)
    return took


def _function(frame: str) -> str:
    """``name (file.py:123)`` -> ``name (file.py)``: samples of one function add up."""
    return _FRAME_LINE.sub(")", frame)


def summarize(raw: Path) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """(samples, top self, top total) of a py-spy raw file."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        found = _LINE.match(line)
        if not found:
            continue
        count = int(found.group(2))
        frames = [_function(f) for f in found.group(1).split(";")]
        samples += count
        own[frames[-1]] += count
        for frame in set(frames[1:]):  # (the first is the thread)
            total[frame] += count
    return samples, own.most_common(TOP), total.most_common(TOP)


def main_profile(
    work: Path,
    kinds: list[Mount],
    view: View,
    native: bool,
    mounted: Callable[[Mount, View, Path, list[float]], AbstractContextManager[None]],
) -> None:
    """Profile each server over each phase and print the summaries."""
    if not PY_SPY.exists():
        raise RuntimeError(f"{PY_SPY} missing: .venv/bin/pip install -e '.[profile]'")
    for kind in kinds:
        mnt = work / f"mnt-{kind.name}"
        with mounted(kind, view, mnt, []):
            for phase, action in phases(mnt):
                out = work / f"profile-{kind.name}-{phase.replace(' ', '_')}.txt"
                took = sampled(kind.pid, out, action, native)
                samples, own, total = summarize(out)
                keep = services.REPO / ".bench" / "profiles"
                keep.mkdir(parents=True, exist_ok=True)
                shutil.copy(out, keep / out.name)
                print(f"\n{kind.name}, {phase}: {took:.3f} s, {samples} CPU samples at {RATE}/s")
                rows = [["self", "function", "total", "function"]]
                for (f1, n1), (f2, n2) in zip(own, total, strict=False):
                    rows.append([str(n1), f1[:70], str(n2), f2[:70]])
                print(table(rows))
