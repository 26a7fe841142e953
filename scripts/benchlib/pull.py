"""``scripts/bench-pull``: fsnap pull vs containerd's ``ctr pull`` of the same image.

Every round starts both from empty stores (a fresh fsnap root; a fresh containerd with its
own root and socket) with caches dropped, and alternates which goes first. No store is
deleted before the benchmark ends (the work directory goes at exit): on an ext4 without a
journal, inodes freed in the last minute or so are skipped one by one when new ones are
allocated nearby (``recently_deleted``), so a run right after a deletion of ~10,000 files
pays for the benchmark's own cleanup, whichever program it is (``--delete-each`` brings
the old behaviour back, to compare). Sequential
``tar -xzf`` of the layers into one directory each is the floor: no network, no hashing,
no metadata store.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

from benchlib import services
from benchlib.image import ImageInfo, blob_path, ensure_images
from benchlib.rootfs import ensure_rootfs
from benchlib.timing import drop_caches, median, ratio, run_timed, seconds, table

REPO = services.REPO
FSNAP = str(REPO / ".venv/bin/fsnap")


def fsnap_pull(
    work: Path, ref: str, tag: str, unpack: bool, delete: bool = False
) -> tuple[float, int]:
    """Seconds for ``fsnap pull`` into a fresh root, and how many snapshots it left."""
    root = work / f"fsnap-{tag}"
    extra = [] if unpack else ["--no-unpack"]
    try:
        drop_caches()
        took = run_timed(
            [FSNAP, "--root", str(root), "pull", "--plain-http", *extra, ref],
            env=services.env_without_proxy(),
        )
        return took, _snapshot_count(root)
    finally:
        if delete:
            shutil.rmtree(root, ignore_errors=True)


def _snapshot_count(root: Path) -> int:
    done = subprocess.run(
        [FSNAP, "--root", str(root), "snapshots", "ls"], capture_output=True, text=True
    )
    return max(0, len(done.stdout.splitlines()) - 1) if done.returncode == 0 else 0


def ctr_pull(work: Path, ref: str, tag: str, unpack: bool, delete: bool = False) -> float:
    """Seconds for ``ctr images pull`` (or ``ctr content fetch``) into a fresh containerd."""
    with services.containerd(work, f"ctrd-{tag}", keep=not delete) as ctrd:
        drop_caches()
        verb = ["images", "pull"] if unpack else ["content", "fetch"]
        return run_timed(ctrd.ctr(*verb, "--plain-http", ref), env=services.env_without_proxy())


def tar_floor(
    work: Path, images_dir: Path, info: ImageInfo, tag: str, delete: bool = False
) -> float:
    """Seconds for ``tar -xzf`` of every layer, one after the other, each into its own dir."""
    base = work / f"tar-floor-{tag}"
    try:
        for n in range(len(info.layers)):
            (base / str(n)).mkdir(parents=True)
        drop_caches()
        script = " && ".join(
            f"tar -xzf {blob_path(images_dir, info.name, str(layer['digest']))} -C {base / str(n)}"
            for n, layer in enumerate(info.layers)
        )
        return run_timed(script, shell=True)
    finally:
        if delete:
            shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench-pull", description=__doc__)
    parser.add_argument("--work", type=Path, required=True, help="scratch directory")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--no-fetch-only",
        action="store_true",
        help="skip the fetch-only rows (fsnap --no-unpack, ctr content fetch)",
    )
    parser.add_argument(
        "--delete-each",
        action="store_true",
        help="delete each store right after its run (penalises the next run)",
    )
    args = parser.parse_args(argv)

    cache = REPO / ".bench"
    rootfs, how = ensure_rootfs(cache)
    info = ensure_images(cache, rootfs)["rootfs"]
    print(f"image ({how}): {info.summary()}")
    results: dict[str, list[float]] = {}
    snapshots: list[int] = []
    with services.registry(args.work) as reg:
        ref = services.push(reg, cache / "images", info)
        print(f"serving {ref} from a local docker-registry\n")
        for r in range(args.rounds):
            _round(args.work, ref, r, results, snapshots, args.delete_each)
            if not args.no_fetch_only:
                _fetch_round(args.work, ref, r, results, args.delete_each)
            took = tar_floor(args.work, cache / "images", info, f"{r}", args.delete_each)
            results.setdefault("tar -xzf (floor)", []).append(took)
            print(f"round {r + 1}: sequential tar -xzf {took:7.3f} s", flush=True)
    _report(results, snapshots, len(info.layers))
    return 0


def _round(
    work: Path,
    ref: str,
    r: int,
    results: dict[str, list[float]],
    snapshots: list[int],
    delete: bool,
) -> None:
    """One fsnap and one containerd pull, alternating which goes first."""
    for who in ("fsnap", "ctr") if r % 2 == 0 else ("ctr", "fsnap"):
        if who == "fsnap":
            took, count = fsnap_pull(work, ref, f"{r}", unpack=True, delete=delete)
            snapshots.append(count)
        else:
            took = ctr_pull(work, ref, f"{r}", unpack=True, delete=delete)
        results.setdefault(f"{who} pull", []).append(took)
        print(f"round {r + 1}: {who:5} pull + unpack {took:7.3f} s", flush=True)


def _fetch_round(
    work: Path, ref: str, r: int, results: dict[str, list[float]], delete: bool
) -> None:
    """Fetch only, to split a pull into download and unpack."""
    fsnap, _ = fsnap_pull(work, ref, f"{r}-fetch", unpack=False, delete=delete)
    ctr = ctr_pull(work, ref, f"{r}-fetch", unpack=False, delete=delete)
    results.setdefault("fsnap pull --no-unpack", []).append(fsnap)
    results.setdefault("ctr content fetch", []).append(ctr)
    print(f"round {r + 1}: fetch only: fsnap {fsnap:.3f} s, ctr {ctr:.3f} s", flush=True)


def _report(results: dict[str, list[float]], snapshots: list[int], layers: int) -> None:
    med = {name: median(values) for name, values in results.items()}
    ctr = med.get("ctr pull")
    rows = [["figure", "runs", "median", "vs ctr pull", "vs tar floor"]]
    for name, values in results.items():
        runs = " ".join(f"{v:.2f}" for v in values)
        rows.append(
            [
                name,
                runs,
                seconds(med[name]),
                ratio(med[name], ctr),
                ratio(med[name], med.get("tar -xzf (floor)")),
            ]
        )
    print("\n" + table(rows))
    unpacked = snapshots and min(snapshots) >= layers
    print(
        f"\nfsnap left {snapshots} snapshots per round for {layers} layers: "
        + (
            "pull unpacked every layer"
            if unpacked
            else "NOT unpacked (fetch only), so "
            "the fsnap/containerd ratio compares fetch against fetch + unpack"
        )
    )
    fetch = results.get("fsnap pull --no-unpack")
    if fetch:
        ctr_fetch = med.get("ctr content fetch")
        print(f"fetch only: fsnap/ctr = {ratio(med['fsnap pull --no-unpack'], ctr_fetch)}")
    note = "(target <= 0.50x)" if unpacked else "(NOT comparable: fsnap did not unpack)"
    print(f"RATIO fsnap pull / ctr pull = {ratio(med.get('fsnap pull'), ctr)} {note}")
