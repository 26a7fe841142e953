"""bench-serve: ``ctr run --rm IMAGE true`` on fsnap (``fsnap serve``) vs containerd's own
overlayfs and native snapshotters, same containerd, same image, one run.

Each snapshotter gets the image pulled (unpacked) once; then per round a cold start (page
cache dropped first) and a warm one. Figures are medians; ratios are against overlayfs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchlib import services
from benchlib.image import ensure_images
from benchlib.rootfs import ensure_rootfs
from benchlib.timing import drop_caches, median, ratio, run_timed, seconds, table

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SNAPSHOTTERS = ("fsnap", "overlayfs", "native")


@contextmanager
def fsnap_serve(work: Path) -> Iterator[Path]:
    """``fsnap serve`` on a store under ``work``; stopped (SIGTERM) after."""
    address = work / "fsnap.sock"
    log = work / "serve.log"
    argv = [str(BIN / "fsnap"), "--root", str(work / "fsnap"), "serve", "--address", str(address)]
    with open(log, "ab") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=out, start_new_session=True)
    services.remember_pid(work, process.pid)
    try:
        deadline = time.monotonic() + 30
        while "listening on" not in log.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"fsnap serve did not start:\n{log.read_text()}")
            time.sleep(0.05)
        yield address
    finally:
        process.terminate()
        process.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench-serve", description=__doc__)
    parser.add_argument("--work", type=Path, required=True, help="scratch directory")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    cache = REPO / ".bench"
    rootfs, how = ensure_rootfs(cache)
    info = ensure_images(cache, rootfs)["rootfs"]
    print(f"image ({how}): {info.summary()}")
    env = {**services.env_without_proxy(), "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    proxy = '[proxy_plugins.fsnap]\n  type = "snapshot"\n  address = "{}"'
    results: dict[str, list[float]] = {}
    with services.registry(args.work) as reg, fsnap_serve(args.work) as address:
        ref = services.push(reg, cache / "images", info)
        with services.containerd(
            args.work, "ctrd", extra_config=proxy.format(address), env=env
        ) as ctrd:
            for name in SNAPSHOTTERS:
                took = run_timed(
                    ctrd.ctr("images", "pull", "--plain-http", "--snapshotter", name, ref), env=env
                )
                print(f"{name:9} pull + unpack {took:7.3f} s", flush=True)
                results.setdefault("pull + unpack", []).append(took)
                _runs(ctrd, ref, name, args.rounds, env, results)
    _report(results)
    return 0


def _runs(
    ctrd: services.Containerd,
    ref: str,
    name: str,
    rounds: int,
    env: dict[str, str],
    results: dict[str, list[float]],
) -> None:
    for r in range(rounds):
        for temperature in ("cold", "warm"):
            if temperature == "cold":
                drop_caches()
            cmd = ctrd.ctr(
                "run", "--rm", "--snapshotter", name, ref, f"{name}-{r}-{temperature}", "/bin/true"
            )
            took = run_timed(cmd, env=env)
            results.setdefault(f"{name} {temperature}", []).append(took)
            print(f"round {r + 1}: {name:9} {temperature} run {took:7.3f} s", flush=True)


def _report(results: dict[str, list[float]]) -> None:
    rows = [["figure", "runs", "median", "vs overlayfs"]]
    for temperature in ("cold", "warm"):
        base = median(results.get(f"overlayfs {temperature}", []))
        for name in SNAPSHOTTERS:
            values = results.get(f"{name} {temperature}", [])
            rows.append(
                [
                    f"ctr run --rm ({name}, {temperature})",
                    " ".join(f"{v:.2f}" for v in values),
                    seconds(median(values)),
                    ratio(median(values), base),
                ]
            )
    pulls = results.get("pull + unpack", [])
    for name, took in zip(SNAPSHOTTERS, pulls, strict=False):
        rows.append(
            [
                f"ctr pull + unpack ({name})",
                f"{took:.2f}",
                seconds(took),
                ratio(took, pulls[1] if len(pulls) > 1 else None),
            ]
        )
    print("\n" + table(rows))
