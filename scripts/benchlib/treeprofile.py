"""Profile the merged tree in-process: time and memory of build, save and load at N entries.

    PYTHONPATH=scripts .venv/bin/python -m benchlib.treeprofile [N ...] [--top K]

Layers are synthetic indexes shaped like ``benchlib.scaleimage`` (directories of 100
entries, a symlink every 50th, a few bytes in every 10th file), so no store is needed.
Memory is what ``tracemalloc`` attributes to the loaded tree (bytes per entry), with the
allocation sites holding most of it, right after loading and after walking every entry;
times are the medians of three runs, in CPU seconds.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from benchlib.image import MTIME
from benchlib.scaleimage import _plan
from fsnap.archive.entry import Entry
from fsnap.mount import treecache
from fsnap.mount.tree import Layer, MergedTree
from fsnap.snapshots.info import Info, Kind


def entries(count: int) -> list[Entry]:
    out: list[Entry] = []
    mtime = MTIME * 10**9
    n = 0
    for leaf, names in _plan(count):
        top = leaf.split("/")[0]
        if leaf.endswith("/d000"):
            out.append(Entry(path=top, kind="dir", mode=0o755, mtime=mtime))
        out.append(Entry(path=leaf, kind="dir", mode=0o755, mtime=mtime))
        for name in names:
            path = f"{leaf}/{name}"
            if n % 50 == 49:
                out.append(Entry(path=path, kind="symlink", mode=0o777, link="f000", mtime=mtime))
            else:
                size = len(f"entry {n}\n") if n % 10 == 0 else 0
                out.append(Entry(path=path, kind="file", mode=0o644, size=size, mtime=mtime))
            n += 1
    return out


def _median_seconds(action: Callable[[], object], runs: int = 3) -> tuple[float, object]:
    """Median CPU seconds (``process_time``: other work on the machine does not count)."""
    times, result = [], None
    for _ in range(runs):
        gc.collect()
        start = time.process_time()
        result = action()
        times.append(time.process_time() - start)
    return statistics.median(times), result


def _walk_fresh(path: Path, chain: list[Info], dirs: list[str]) -> int:
    tree = treecache.load(path, chain, dirs)
    assert tree is not None
    return sum(1 for _ in tree.walk())


def profile(count: int, top: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        layer_dir = Path(tmp) / "fs"
        layer_dir.mkdir()
        os.chmod(tmp, 0o700)
        layers = [Layer(layer_dir, entries(count), name="sha256:top")]
        chain = [Info(name="sha256:top", kind=Kind.COMMITTED)]
        dirs = [str(layer_dir)]
        build_s, tree = _median_seconds(lambda: MergedTree.build(layers))
        assert isinstance(tree, MergedTree)
        path = Path(tmp) / treecache.CACHE_NAME
        save_s, _ = _median_seconds(lambda: treecache.save(path, tree, chain, dirs))
        load_s, _ = _median_seconds(lambda: treecache.load(path, chain, dirs))
        gc.collect()
        tracemalloc.start(1)
        before = tracemalloc.take_snapshot()
        loaded = treecache.load(path, chain, dirs)
        gc.collect()
        at_load = tracemalloc.get_traced_memory()[0]
        assert loaded is not None
        walked = sum(1 for _ in loaded.walk())
        gc.collect()
        current, peak = tracemalloc.get_traced_memory()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        size = path.stat().st_size
        walk_s, _ = _median_seconds(lambda: _walk_fresh(path, chain, dirs))
    print(
        f"{count} entries: build {build_s * 1000:.0f} ms, save {save_s * 1000:.0f} ms, "
        f"load {load_s * 1000:.0f} ms, load + walk all {walk_s * 1000:.0f} ms; "
        f"cache {size / count:.0f} B/entry; loaded tree {at_load / count:.0f} B/entry, "
        f"{current / count:.0f} B/entry after walking its {walked} entries "
        f"(peak {peak / count:.0f})"
    )
    for stat in after.compare_to(before, "lineno")[:top]:
        print(f"   {stat.size_diff / count:7.1f} B/entry  {stat.traceback[0]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("counts", nargs="*", type=int, default=[100_000])
    parser.add_argument("--top", type=int, default=8)
    args = parser.parse_args()
    for count in args.counts:
        profile(count, args.top)


if __name__ == "__main__":
    main()
