"""``scripts/bench-mount --interleaved N``: the short figures (one chroot python3 run, 1,000
warm ``stat``s) with every server mounted at once and the runs interleaved.

The main bench times each server in its own minutes and the python figure is one sample a
round (five runs, ~0.25 s), so one stall of the machine moves a median of three rounds by
20 % or more. Here fsnap, the pyfuse3 floor and fuse-overlayfs serve the bench image (and
the 1-layer lookup image) side by side; each is warmed once (``tar`` of the tree, one
``stat`` pass); then ``N`` rounds, each in a rotated order, time one ``chroot MNT python3``
import run and one warm ``stat`` x1000 per server. Reported: the median and quartiles of
each, and the ratios of the medians.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from benchlib.image import lookup_paths
from benchlib.mounts import FloorMount, FsnapMount, FuseOverlayMount, Mount, View
from benchlib.timing import median, ratio, run_timed, table

IMPORTS = "import json, email, http.client"
STAT_SCRIPT = (
    "import os, sys, time\n"
    "paths = [os.path.join(sys.argv[1], p) for p in sys.argv[2:]]\n"
    "start = time.perf_counter()\n"
    "for p in paths:\n    os.stat(p)\n"
    "print(time.perf_counter() - start)\n"
)


def _stat_ms(mnt: Path) -> float:
    done = subprocess.run(
        ["python3", "-c", STAT_SCRIPT, str(mnt), *lookup_paths()],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(done.stdout) * 1000


@contextlib.contextmanager
def _mounted_all(
    work: Path, makers: dict[str, Callable[[], Mount]], views: dict[str, View]
) -> Iterator[None]:
    """Every server over both images, warmed; all unmounted whatever happens."""
    done: list[tuple[Mount, Path]] = []
    try:
        for name, make in makers.items():
            for image in ("rootfs", "layers1"):
                kind, mnt = make(), work / f"mnt-{name}-{image}"
                mnt.mkdir(exist_ok=True)
                kind.mount(views[image], mnt)
                done.append((kind, mnt))
                if image == "rootfs":
                    tar = f"tar -cf - -C {mnt} . | cat > /dev/null"
                    subprocess.run(tar, shell=True, check=True)
                else:
                    _stat_ms(mnt)
        yield
    finally:
        for kind, mnt in reversed(done):
            try:
                kind.umount(mnt)
            except (RuntimeError, subprocess.CalledProcessError):
                subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


def _quartiles(values: list[float]) -> str:
    ordered = sorted(values)
    return f"{ordered[len(ordered) // 4]:.2f}-{ordered[3 * len(ordered) // 4]:.2f}"


def main_interleaved(work: Path, fsnap_root: Path, views: dict[str, View], rounds: int) -> None:
    makers: dict[str, Callable[[], Mount]] = {
        "fsnap": lambda: FsnapMount(work, fsnap_root),
        "pyfuse3-floor": lambda: FloorMount(work),
        "fuse-overlayfs": lambda: FuseOverlayMount(work),
    }
    names = list(makers)
    python: dict[str, list[float]] = {name: [] for name in names}
    stats: dict[str, list[float]] = {name: [] for name in names}
    with _mounted_all(work, makers, views):
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                chroot = ["chroot", str(work / f"mnt-{name}-rootfs"), "python3", "-c", IMPORTS]
                python[name].append(run_timed(chroot) * 1000)
                stats[name].append(_stat_ms(work / f"mnt-{name}-layers1"))
    rows = [["figure (ms)", "server", "median", "quartiles", "vs fuse-overlayfs", "vs floor"]]
    for figure, values in (("chroot python3, one run", python), ("stat x1000 warm", stats)):
        med = {name: median(v) for name, v in values.items()}
        for name in names:
            rows.append(
                [
                    figure,
                    name,
                    f"{med[name]:.2f}",
                    _quartiles(values[name]),
                    ratio(med[name], med["fuse-overlayfs"]),
                    ratio(med[name], med["pyfuse3-floor"]),
                ]
            )
    print(f"{rounds} interleaved rounds, every server mounted at once:\n")
    print(table(rows))
