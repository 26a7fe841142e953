"""``scripts/bench-mount``: fsnap's mount vs fuse-overlayfs vs kernel overlayfs.

All three present the same image: fsnap from its own pull, the other two over the
directories containerd's overlayfs snapshotter unpacked (``ctr pull``). Cold figures drop
the page, dentry and inode caches first. ``tar`` goes through a pipe: GNU tar writing to
/dev/null itself skips reading file contents.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

from benchlib import fsnap_layers, services
from benchlib.image import ImageInfo, ensure_images, lookup_paths
from benchlib.interleaved import IMPORTS, STAT_SCRIPT, main_interleaved
from benchlib.mounts import (
    FSNAP,
    FloorMount,
    FsnapMount,
    FuseOverlayMount,
    KernelOverlayMount,
    Mount,
    View,
    cpu_seconds,
    rss_mb,
)
from benchlib.profile import main_profile
from benchlib.requests import main_requests
from benchlib.rootfs import apt_install_missing, ensure_rootfs
from benchlib.timing import drop_caches, median, ratio, run_timed, table

PULL_TIMEOUT = 120.0
# The x5 figure is one sample per round of ~0.25 s in which a single stall shows (3-round
# medians of it ranged 1.01-1.26x fuse-overlayfs on one quiet machine); each round also
# times this many single runs, and their median over all rounds is the steadier figure.
SINGLE_RUNS = 10
ONE_RUN = f"chroot python3 imports, one run (ms, median of {SINGLE_RUNS} a round)"
Figures = dict[str, dict[str, list[float]]]  # figure -> mount kind -> values


@contextlib.contextmanager
def mounted(kind: Mount, view: View, mnt: Path, took: list[float]) -> Iterator[None]:
    """Mount (appending the seconds it took to ``took``); unmount whatever happens."""
    mnt.mkdir(exist_ok=True)
    try:
        took.append(kind.mount(view, mnt))
        yield
    finally:
        try:
            kind.umount(mnt)
        except (RuntimeError, subprocess.CalledProcessError):
            subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


def tree_figures(kind: Mount, view: View, mnt: Path, figures: Figures) -> None:
    """One round over the big image: mount, find, tar cold and warm, chroot, RSS; and the
    serving process's CPU seconds in each phase (less sensitive to a loaded machine than
    the wall-clock figures: what a server spends per request)."""

    def add(figure: str, value: float) -> None:
        figures.setdefault(figure, {}).setdefault(kind.name, []).append(value)

    def run(figure: str, cmd: list[str] | str) -> None:
        before = cpu_seconds(kind.pid) if kind.pid else None
        add(figure, run_timed(cmd, shell=isinstance(cmd, str)))
        after = cpu_seconds(kind.pid) if kind.pid else None
        if before is not None and after is not None:
            cpu.append((figure.replace(" (s)", ""), after - before))

    cpu: list[tuple[str, float]] = []

    took: list[float] = []
    drop_caches()
    with mounted(kind, view, mnt, took):
        add("mount returns (s)", took[0])
        drop_caches()
        run("find, cold (s)", ["find", str(mnt)])
        tar = f"tar -cf - -C {mnt} . | cat > /dev/null"
        drop_caches()
        run("tar -cf - ., cold (s)", tar)
        run("tar -cf - ., warm (s)", tar)
        chroot = " && ".join([f"chroot {mnt} python3 -c '{IMPORTS}'"] * 5)
        run("chroot python3 imports x5 (s)", chroot)
        for _ in range(SINGLE_RUNS):
            add(ONE_RUN, run_timed(["chroot", str(mnt), "python3", "-c", IMPORTS]) * 1000)
        memory = rss_mb(kind.pid) if kind.pid else None
        if memory is not None:
            add("daemon VmRSS after tar (MB)", memory[0])
            add("daemon VmHWM (MB)", memory[1])
        for figure, seconds in cpu:
            add(f"daemon CPU in {figure} (s)", seconds)


def stat_seconds(mnt: Path, paths: list[str]) -> float:
    done = subprocess.run(
        ["python3", "-c", STAT_SCRIPT, str(mnt), *paths], check=True, capture_output=True, text=True
    )
    return float(done.stdout)


def lookup_figures(kind: Mount, views: dict[str, View], mnt: Path, figures: Figures) -> None:
    """stat of 1000 paths spread over all layers, cold and warm, at 1 and 128 layers."""
    paths = lookup_paths()
    for name, label in (("layers1", "1 layer"), ("layers128", "128 layers")):
        with mounted(kind, views[name], mnt, []):
            drop_caches()
            cold = stat_seconds(mnt, paths)
            warm = stat_seconds(mnt, paths)
        figures.setdefault(f"stat x1000 cold, {label} (ms)", {}).setdefault(kind.name, []).append(
            cold * 1000
        )
        figures.setdefault(f"stat x1000 warm, {label} (ms)", {}).setdefault(kind.name, []).append(
            warm * 1000
        )


# --- setup ---------------------------------------------------------------------------------


def containerd_views(
    ctrd: services.Containerd, refs: dict[str, str], infos: dict[str, ImageInfo]
) -> dict[str, View]:
    """``ctr pull`` every image; read its snapshot directories from a view's mounts."""
    views = {}
    for name, ref in refs.items():
        ctrd.run("images", "pull", "--plain-http", ref)
        views[name] = View(ref, ctrd.lowerdirs(f"bench-view-{name}", infos[name].top_chain_id))
    return views


def fsnap_pull_all(
    work: Path, root: Path, views: dict[str, View], infos: dict[str, ImageInfo]
) -> list[str]:
    """``fsnap pull`` every image. An image that pull does not leave unpacked (pull failed,
    hung past PULL_TIMEOUT, or does not unpack) is unpacked with fsnap's own applier into
    bare layer directories instead, and the returned notes say so."""
    notes = []
    cache = services.REPO / ".bench" / "images"
    for name, view in views.items():
        problem = _fsnap_pull(root, view.ref, len(infos[name].layers))
        if problem is None:
            notes.append(f"{name}: fsnap pull + fsnap mount REF MNT")
            continue
        notes.append(
            f"{name}: {problem}; mounted instead from layers applied by "
            "fsnap.archive.apply_layer, via fsnap.mount.manager.mount_layers"
        )
        view.fsnap_layers = fsnap_layers.unpack(cache, infos[name], work / "fsnap-layers" / name)
    return notes


def _fsnap_pull(root: Path, ref: str, layers: int) -> str | None:
    """None if ``fsnap pull`` left ``ref`` unpacked, else what went wrong."""
    before = _snapshot_count(root)
    try:
        done = subprocess.run(
            [FSNAP, "--root", str(root), "pull", "--plain-http", ref],
            capture_output=True,
            text=True,
            timeout=PULL_TIMEOUT,
            env=services.env_without_proxy(),
        )
    except subprocess.TimeoutExpired:
        return f"fsnap pull HUNG (killed after {PULL_TIMEOUT:.0f} s)"
    if done.returncode != 0:
        return f"fsnap pull FAILED ({done.returncode}): {done.stderr.strip()[-300:]}"
    added = _snapshot_count(root) - before
    if added < layers:
        return f"fsnap pull left {added} new snapshots for {layers} layers (not unpacked)"
    return None


def _snapshot_count(root: Path) -> int:
    listed = subprocess.run(
        [FSNAP, "--root", str(root), "snapshots", "ls"], capture_output=True, text=True
    )
    return max(0, len(listed.stdout.splitlines()) - 1) if listed.returncode == 0 else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench-mount", description=__doc__)
    parser.add_argument("--work", type=Path, required=True, help="scratch directory")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--requests",
        action="store_true",
        help="instead of timing: count the FUSE requests and system calls of each phase",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also time the pyfuse3 floor (benchlib.nullfs): the least a pyfuse3 server does",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of timing: py-spy profiles of fsnap's and the floor's server per phase",
    )
    parser.add_argument("--native", action="store_true", help="--profile with C frames")
    parser.add_argument(
        "--interleaved",
        type=int,
        metavar="N",
        help="instead: N interleaved rounds of one python run and warm stat x1000, with "
        "fsnap, the floor and fuse-overlayfs mounted at once",
    )
    args = parser.parse_args(argv)
    apt_install_missing("fuse-overlayfs", "fuse-overlayfs")
    apt_install_missing("strace", "strace")

    cache = services.REPO / ".bench"
    rootfs, how = ensure_rootfs(cache)
    infos = ensure_images(cache, rootfs)
    for info in infos.values():
        print(f"image ({how}): {info.summary()}")
    figures: Figures = {}
    with services.registry(args.work) as reg, services.containerd(args.work, "ctrd") as ctrd:
        refs = {name: services.push(reg, cache / "images", info) for name, info in infos.items()}
        views = containerd_views(ctrd, refs, infos)
        fsnap = FsnapMount(args.work, args.work / "fsnap")
        for note in fsnap_pull_all(args.work, fsnap.root, views, infos):
            print(f"fsnap, {note}", flush=True)
        print()
        if args.requests:
            main_requests(args.work, fsnap.root, views["rootfs"])
            return 0
        if args.interleaved:
            main_interleaved(args.work, fsnap.root, views, args.interleaved)
            return 0
        if args.profile:
            floor = FloorMount(args.work)
            main_profile(args.work, [fsnap, floor], views["rootfs"], args.native, mounted)
            return 0
        kinds: list[Mount] = [fsnap, FuseOverlayMount(args.work), KernelOverlayMount(args.work)]
        if args.floor:
            kinds.append(FloorMount(args.work))
        for r in range(args.rounds):
            for kind in kinds[r % len(kinds) :] + kinds[: r % len(kinds)]:
                tree_figures(kind, views["rootfs"], args.work / f"mnt-{kind.name}", figures)
                print(f"round {r + 1}: {kind.name} done", flush=True)
        for _ in range(args.rounds):
            for kind in kinds:
                lookup_figures(kind, views, args.work / f"mnt-{kind.name}", figures)
    _report(figures, [k.name for k in kinds])
    return 0


def _report(figures: Figures, kinds: list[str]) -> None:
    print("\nevery run (seconds unless the figure says otherwise):")
    for figure, by_kind in figures.items():
        runs = "; ".join(
            f"{k}: " + " ".join(f"{v:.3f}" for v in vals) for k, vals in by_kind.items()
        )
        print(f"  {figure}: {runs}")
    floor = FloorMount.name in kinds
    rows = [["figure (median)", *kinds, "fsnap/fuse-overlayfs", "fsnap/overlayfs"]]
    if floor:
        rows[0] += ["fsnap/pyfuse3-floor", "pyfuse3-floor/fuse-overlayfs"]
    for figure, by_kind in figures.items():
        med = {k: median(v) if v else None for k, v in by_kind.items()}
        cells = [f"{med[k]:.3f}" if med.get(k) is not None else "-" for k in kinds]
        rows.append(
            [
                figure,
                *cells,
                ratio(med.get("fsnap"), med.get("fuse-overlayfs")),
                ratio(med.get("fsnap"), med.get("overlayfs")),
            ]
        )
        if floor:
            rows[-1] += [
                ratio(med.get("fsnap"), med.get(FloorMount.name)),
                ratio(med.get(FloorMount.name), med.get("fuse-overlayfs")),
            ]
    print("\n" + table(rows))
    print("\nlookups vs layer count (stat x1000, 128 layers / 1 layer):")
    for temp in ("cold", "warm"):
        deep = figures.get(f"stat x1000 {temp}, 128 layers (ms)", {})
        flat = figures.get(f"stat x1000 {temp}, 1 layer (ms)", {})
        cells = [f"{k} {ratio(median(deep.get(k, [])), median(flat.get(k, [])))}" for k in kinds]
        print(f"  {temp}: " + ", ".join(cells))
