"""``scripts/bench-regress``: this checkout's fsnap against an older commit's, side by side.

A refactoring must not make fsnap slower. The older commit is checked out into the work
directory (``git worktree``) and set up with its own ``scripts/setup``; then every round
runs both builds on the same image from the same local registry, alternating which goes
first: ``fsnap pull`` into a fresh root (caches dropped), then the mount figures of
``scripts/bench-mount`` (mount return, find and tar cold, tar warm, chroot python3 x5,
the serving process's memory). The report gives medians and head/base ratios; a ratio
above 1 means this checkout is slower. Nothing is asserted: on a loaded machine read the
ratios together with the spread of the runs, which are all printed.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

from benchlib import services
from benchlib.image import ensure_images
from benchlib.mount import Figures, tree_figures
from benchlib.mounts import FSNAP, FsnapMount, View
from benchlib.rootfs import ensure_rootfs
from benchlib.timing import compile_sources, drop_caches, median, ratio, run_timed, table

REPO = services.REPO


def checkout(base: str, work: Path) -> str:
    """Set up commit ``base`` in ``work/base``; its ``fsnap`` executable."""
    tree = work / "base"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), base],
        check=True,
        capture_output=True,
        text=True,
    )
    subprocess.run(["bash", "scripts/setup"], cwd=tree, check=True, capture_output=True, text=True)
    compile_sources(tree)
    return str(tree / ".venv/bin/fsnap")


def remove_checkout(work: Path) -> None:
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "remove", "--force", str(work / "base")],
        check=False,
        capture_output=True,
    )


def pull_seconds(exe: str, root: Path, ref: str) -> float:
    drop_caches()
    return run_timed(
        [exe, "--root", str(root), "pull", "--plain-http", ref], env=services.env_without_proxy()
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench-regress", description=__doc__)
    parser.add_argument("--work", type=Path, required=True, help="scratch directory")
    parser.add_argument("--base", default="6323ded", help="the commit to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    cache = REPO / ".bench"
    rootfs, how = ensure_rootfs(cache)
    info = ensure_images(cache, rootfs)["rootfs"]
    print(f"image ({how}): {info.summary()}")
    try:
        builds = {"base": checkout(args.base, args.work), "head": FSNAP}
        print(f"base: {args.base}; head: this checkout\n", flush=True)
        figures: Figures = {}
        with services.registry(args.work) as reg:
            ref = services.push(reg, cache / "images", info)
            for r in range(args.rounds):
                order = list(builds) if r % 2 == 0 else list(reversed(builds))
                for name in order:
                    _round(args.work, name, builds[name], ref, r, figures)
        _report(figures)
    finally:
        remove_checkout(args.work)
    return 0


def _round(work: Path, name: str, exe: str, ref: str, r: int, figures: Figures) -> None:
    """One pull into a fresh root, then the mount figures over what it pulled."""
    root = work / f"{name}-{r}"
    took = pull_seconds(exe, root, ref)
    figures.setdefault("fsnap pull (s)", {}).setdefault(name, []).append(took)
    kind = FsnapMount(work, root, exe=exe, name=name)
    tree_figures(kind, View(ref, []), work / f"mnt-{name}", figures)
    print(f"round {r + 1}: {name} done (pull {took:.3f} s)", flush=True)


def _report(figures: Figures) -> None:
    print("\nevery run (seconds unless the figure says otherwise):")
    for figure, by_build in figures.items():
        runs = "; ".join(f"{k}: " + " ".join(f"{v:.3f}" for v in vs) for k, vs in by_build.items())
        print(f"  {figure}: {runs}")
    rows = [["figure (median)", "base", "head", "head/base"]]
    for figure, by_build in figures.items():
        base, head = median(by_build.get("base", [])), median(by_build.get("head", []))
        rows.append([figure, f"{base:.3f}", f"{head:.3f}", ratio(head, base)])
    print("\n" + table(rows))
