"""``scripts/bench-scale``: how fsnap grows with the entry count, beside fuse-overlayfs.

Generated images (``benchlib.scaleimage``) of 10,000, 100,000 and 500,000 entries in one
layer and 100,000 in 64 layers are pushed to a local registry and pulled with ``fsnap pull``
(beside a sequential ``tar -xzf`` of the same layers). Each image is then mounted by fsnap
(``fsnap mount``: cold, i.e. building the merged tree from the layer indexes, and again
from the cached tree) and by fuse-overlayfs over fsnap's own unpacked snapshot directories
(the same files), and measured: mount return time; ``find`` (cold caches), the serving
daemon's VmRSS after it; an ``lstat`` of every entry, cold and warm. Then the growth slope
of each figure per 100,000 entries over the one-layer images (least squares), and the
daemon's bytes per entry. Asserts nothing but that both mounts list every entry.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from benchlib import scaleimage, services
from benchlib.image import ImageInfo, blob_path
from benchlib.mounts import FSNAP, FsnapMount, FuseOverlayMount, Mount, View, rss_mb
from benchlib.timing import drop_caches, median, ratio, run_timed, table
from fsnap.client import Client
from fsnap.mount import treecache

SIZES = (10_000, 100_000, 500_000)
DEEP = (100_000, 64)
PULL_TIMEOUT = 1800.0
WALK_SCRIPT = (
    "import os, stat, sys, time\n"
    "start = time.perf_counter()\n"
    "count, stack = 0, [sys.argv[1]]\n"
    "while stack:\n"
    "    with os.scandir(stack.pop()) as it:\n"
    "        for e in it:\n"
    "            count += 1\n"
    "            if stat.S_ISDIR(os.lstat(e.path).st_mode):\n"
    "                stack.append(e.path)\n"
    "print(time.perf_counter() - start, count)\n"
)
Figures = dict[str, dict[str, dict[str, list[float]]]]  # image -> figure -> kind -> values
FSNAP_COLD = "fsnap (no cached tree)"


def _add(figures: Figures, image: str, figure: str, kind: str, value: float) -> None:
    figures.setdefault(image, {}).setdefault(figure, {}).setdefault(kind, []).append(value)


@contextlib.contextmanager
def mounted(kind: Mount, view: View, mnt: Path) -> Iterator[float]:
    """Mount; yield the seconds it took to return; unmount whatever happens."""
    mnt.mkdir(exist_ok=True)
    try:
        yield kind.mount(view, mnt)
    finally:
        try:
            kind.umount(mnt)
        except (RuntimeError, subprocess.CalledProcessError):
            subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


def walk(mnt: Path, entries: int) -> float:
    """Seconds to lstat every entry below ``mnt``; the count must be ``entries``."""
    done = subprocess.run(
        ["python3", "-c", WALK_SCRIPT, str(mnt)], check=True, capture_output=True, text=True
    )
    seconds, count = done.stdout.split()
    if int(count) != entries:
        raise RuntimeError(f"{mnt}: the walk saw {count} entries, the image has {entries}")
    return float(seconds)


def measure(kind: Mount, view: View, mnt: Path, image: str, entries: int, figures: Figures) -> None:
    """One round of one mount kind over one image."""
    drop_caches()
    with mounted(kind, view, mnt) as took:
        _add(figures, image, "mount returns (s)", kind.name, took)
        drop_caches()
        _add(figures, image, "find, cold (s)", kind.name, run_timed(["find", str(mnt)]))
        memory = rss_mb(serving_pid(kind.pid)) if kind.pid else None
        if memory is not None:
            _add(figures, image, "daemon VmRSS after find (MB)", kind.name, memory[0])
        drop_caches()
        _add(figures, image, "lstat every entry, cold (s)", kind.name, walk(mnt, entries))
        _add(figures, image, "lstat every entry, warm (s)", kind.name, walk(mnt, entries))


def serving_pid(pid: int) -> int:
    """The process that serves the mount: ``fsnap mount`` reports its supervisor, which
    forks the server (a child); fuse-overlayfs serves by itself (no children)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return pid
    return int(children[0]) if len(children) == 1 else pid


def mount_cold(fsnap: FsnapMount, view: View, mnt: Path, image: str, figures: Figures) -> None:
    """``fsnap mount`` without a cached tree: the daemon folds the layer indexes."""
    cache_file(fsnap.root, view.ref).unlink(missing_ok=True)
    drop_caches()
    with mounted(fsnap, view, mnt) as took:
        _add(figures, image, "mount returns (s)", FSNAP_COLD, took)


# --- the store ----------------------------------------------------------------------------


def _top(root: Path, ref: str) -> str:
    from fsnap.mount.source import image_snapshot

    with Client(root) as client:
        return image_snapshot(client.content, client.images, ref)


def cache_file(root: Path, ref: str) -> Path:
    with Client(root) as client:
        from fsnap.mount.source import image_snapshot

        return (
            client.snapshots.state_dir(image_snapshot(client.content, client.images, ref))
            / treecache.CACHE_NAME
        )


def snapshot_dirs(root: Path, ref: str) -> list[str]:
    """fsnap's unpacked layer directories of ``ref``, top first (fuse-overlayfs's order)."""
    from fsnap.mount.source import image_snapshot

    with Client(root) as client:
        chain = client.snapshots.chain(image_snapshot(client.content, client.images, ref))
        return [str(client.snapshots.dir(info.name)) for info in reversed(chain)]


def pull(work: Path, reg_ref: str, info: ImageInfo, rounds: int, figures: Figures) -> Path:
    """``fsnap pull`` into fresh stores (``rounds`` times) and ``tar -xzf`` of the layers;
    returns the last store's root."""
    images_dir = services.REPO / ".bench" / "images"
    root = work / "none"
    for n in range(rounds):
        root = work / f"store-{info.name}-{n}"
        cmd = [FSNAP, "--root", str(root), "pull", "--plain-http", reg_ref]
        took = run_timed(cmd, env=services.env_without_proxy())
        _add(figures, info.name, "pull (s)", "fsnap", took)
        dest = work / f"tar-{info.name}-{n}"
        dest.mkdir()
        blobs = " ".join(
            str(blob_path(images_dir, info.name, str(layer["digest"]))) for layer in info.layers
        )
        script = f"for b in {blobs}; do tar -xzf $b -C {dest}; done"
        _add(figures, info.name, "pull (s)", "tar -xzf", run_timed(script, shell=True))
    return root


# --- report -------------------------------------------------------------------------------


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / var if var else float("nan")


def report(
    figures: Figures, entries: dict[str, int], kinds: list[str], growth: bool = True
) -> None:
    print("\nevery run:")
    for image, by_figure in figures.items():
        for figure, by_kind in by_figure.items():
            runs = "; ".join(
                f"{k}: " + " ".join(f"{v:.3f}" for v in vals) for k, vals in by_kind.items()
            )
            print(f"  {image} {figure}: {runs}")
    rows = [["image / figure (median)", *kinds, "fsnap/fuse-overlayfs"]]
    for image, by_figure in figures.items():
        for figure, by_kind in by_figure.items():
            med = {k: median(v) for k, v in by_kind.items()}
            cells = [f"{med[k]:.3f}" if k in med else "-" for k in kinds]
            other = "tar -xzf" if figure.startswith("pull") else "fuse-overlayfs"
            rows.append([f"{image} {figure}", *cells, ratio(med.get("fsnap"), med.get(other))])
    print("\n" + table(rows))
    if not growth:
        return
    flat = [name for name in figures if name.endswith("-1l")]
    print("\ngrowth over the one-layer images, per 100,000 entries (least-squares slope):")
    for figure in next(iter(figures.values()), {}):
        cells = []
        for kind in kinds:
            points = [
                (entries[name], median(figures[name][figure][kind]))
                for name in flat
                if kind in figures[name].get(figure, {})
            ]
            if len(points) >= 2:
                cells.append(f"{kind} {slope(points) * 100_000:.3f}")
        if cells:
            print(f"  {figure}: " + ", ".join(cells))
    print("\ndaemon VmRSS per entry (bytes; median RSS / entries):")
    for name in figures:
        by_kind = figures[name].get("daemon VmRSS after find (MB)", {})
        cells = [f"{k} {median(v) * 1024 * 1024 / entries[name]:.0f}" for k, v in by_kind.items()]
        print(f"  {name}: " + ", ".join(cells))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench-scale", description=__doc__)
    parser.add_argument("--work", type=Path, required=True, help="scratch directory")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the mount figures")
    parser.add_argument("--pull-rounds", type=int, default=1)
    parser.add_argument(
        "--sizes", default=",".join(map(str, SIZES)), help="entry counts of one-layer images"
    )
    parser.add_argument("--no-deep", action="store_true", help="skip the 64-layer image")
    args = parser.parse_args(argv)
    images_dir = services.REPO / ".bench" / "images"
    specs = [(int(size), 1) for size in args.sizes.split(",")]
    if not args.no_deep:
        specs.append(DEEP)
    infos = {scaleimage.image_name(n, k): scaleimage.ensure(images_dir, n, k) for n, k in specs}
    entries = {scaleimage.image_name(n, k): n for n, k in specs}
    for info in infos.values():
        print(f"image: {info.summary()}", flush=True)
    figures: Figures = {}
    fuse = FuseOverlayMount(args.work)
    with services.registry(args.work) as reg:
        for name, info in infos.items():
            ref = services.push(reg, images_dir, info)
            root = pull(args.work, ref, info, args.pull_rounds, figures)
            fsnap = FsnapMount(args.work, root)
            view = View(ref, snapshot_dirs(root, ref))
            try:
                rounds(args.rounds, fsnap, fuse, view, args.work / "mnt", name, entries, figures)
            except RuntimeError as exc:
                print(f"{name}: FAILED: {exc}\n{_daemon_logs(root)}", flush=True)
            report({name: figures.get(name, {})}, entries, KINDS, growth=False)
    report(figures, entries, KINDS)
    return 0


KINDS = ["fsnap", FSNAP_COLD, "fuse-overlayfs", "tar -xzf"]


def rounds(
    count: int,
    fsnap: FsnapMount,
    fuse: FuseOverlayMount,
    view: View,
    mnt: Path,
    name: str,
    entries: dict[str, int],
    figures: Figures,
) -> None:
    for r in range(count):
        mount_cold(fsnap, view, mnt, name, figures)
        for kind in [fsnap, fuse] if r % 2 == 0 else [fuse, fsnap]:
            measure(kind, view, mnt, name, entries[name], figures)
        print(f"{name}: round {r + 1} done", flush=True)


def _daemon_logs(root: Path, lines: int = 20) -> str:
    """The tail of every mount log of the store (what a failed daemon said)."""
    out = []
    for log in sorted(root.rglob("*.log")):
        text = log.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"--- {log}\n" + "\n".join(text))
    return "\n".join(out)
