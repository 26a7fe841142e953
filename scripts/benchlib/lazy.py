"""``scripts/bench-lazy``: lazy mount of an eStargz image vs full pulls, on a throttled link.

The benchmark image (``benchlib.image``'s ``rootfs``: Debian minbase + python3 and a data
layer) is pulled from a local registry, converted with ``fsnap convert --estargz`` and
pushed back. Then, through ``benchlib.throttle`` (100 Mbit/s, 20 ms round trip unless told
otherwise), each round measures from command start to the first output of
``chroot MNT python3 -c 'import json; print(1)'``:

- ``lazy``: ``fsnap mount --lazy --pull REF MNT``, then the chroot (the background fetch
  goes on; the time it takes to complete the image is measured too: until no snapshot is
  labelled lazy any more, else until ``fsnap content ls`` lists every layer blob);
- ``fsnap``: ``fsnap pull REF`` + ``fsnap mount REF MNT``, then the chroot;
- ``ctr``: ``ctr images pull`` + ``ctr images mount`` (kernel overlayfs), then the chroot;
- ``lazy+pf`` (with ``--record-prefetch``): ``lazy`` on the image converted again with a
  prefetch list recorded from the workload, as ``ctr-remote image optimize`` records one:
  the files a lazy mount without background fetch had fetched when the program first
  printed. A second figure beside the main one (``lazy``: the default conversion).

Every run starts from an empty store and dropped caches; bytes are what the proxy delivered
to the client before the first output. No store is removed before the last round (the
work directory goes at exit): on ext4, creating inodes within a minute of a mass deletion
in the same block group makes the allocator skip every recently freed inode one by one
(``recently_deleted``); here a ``mkdir`` took 0.27 ms instead of 0.04 ms and the lazy
layout of the biggest layer 0.46 s of CPU instead of 0.16 s, right after the preparation
store (10,000 inodes) was removed. Ratios compare medians of the same run. Rows whose
command this fsnap lacks (``mount --lazy`` before it exists) say so and are left out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import services, throttle
from benchlib.image import ensure_images
from benchlib.rootfs import ensure_rootfs
from benchlib.timing import drop_caches, median, ratio, table

FSNAP = str(services.REPO / ".venv/bin/fsnap")
CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"
PROGRAM = ["python3", "-c", "import json; print(1)"]
COMPLETE_TIMEOUT = 1800.0


@dataclass
class Run:
    """One measured start: seconds to the first output, bytes fetched by then, and (lazy)
    seconds until the image was complete in the store."""

    first_output: float
    fetched: int
    complete: float | None = None


@dataclass
class Results:
    runs: dict[str, list[Run]] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, run: Run) -> None:
        self.runs.setdefault(name, []).append(run)
        extra = f", complete after {run.complete:.2f} s" if run.complete is not None else ""
        print(
            f"  {name:6} first output {run.first_output:7.2f} s, "
            f"{run.fetched / 1e6:7.1f} MB fetched{extra}",
            flush=True,
        )


def fsnap(root: Path, *args: str) -> list[str]:
    return [FSNAP, "--root", str(root), *args]


def check(argv: list[str], timeout: float = 1800.0) -> str:
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=services.env_without_proxy()
    )
    if done.returncode != 0:
        raise RuntimeError(f"{argv!r} failed ({done.returncode}): {done.stderr[-1500:]}")
    return done.stdout


def first_output(mnt: Path) -> None:
    """Run the program in ``mnt``; return once it printed its first line (it must be 1)."""
    proc = subprocess.Popen([CHROOT, str(mnt), *PROGRAM], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    proc.wait(timeout=600)
    if line.strip() != "1" or proc.returncode != 0:
        raise RuntimeError(f"chroot python3 printed {line!r}, exit {proc.returncode}")


def prepare(
    work: Path, reg_host: str, ref: str, prefetch: Path | None, tag: str = "esgz"
) -> tuple[str, set[str]]:
    """Pull the image directly, convert it to eStargz, push it as ``tag``; the new
    repository path and its layer digests."""
    root = work / f"prep-{tag}"
    check(fsnap(root, "pull", "--plain-http", ref))
    esgz = ref.rsplit(":", 1)[0] + ":" + tag
    extra = ["--prefetch-from", str(prefetch)] if prefetch else []
    started = time.perf_counter()
    check(fsnap(root, "convert", "--estargz", *extra, ref, esgz))
    print(f"fsnap convert --estargz took {time.perf_counter() - started:.1f} s (unthrottled)")
    check(fsnap(root, "push", "--plain-http", esgz))
    digests = layer_digests(root, esgz)
    return esgz.removeprefix(reg_host + "/"), digests


def has_lazy_mount() -> bool:
    done = subprocess.run([FSNAP, "mount", "--help"], capture_output=True, text=True)
    return "--lazy" in done.stdout


@contextlib.contextmanager
def fsnap_mounted(root: Path, mnt: Path, *args: str) -> Iterator[None]:
    mnt.mkdir(parents=True, exist_ok=True)
    try:
        check(fsnap(root, "mount", *args, str(mnt)))
        yield
    finally:
        if subprocess.run(fsnap(root, "umount", str(mnt)), capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


def layer_digests(root: Path, ref: str) -> set[str]:
    from fsnap.client import Client
    from fsnap.reference import Reference

    with Client(root) as client:
        image = client.images.get(str(Reference.parse(ref)))
        manifest = json.loads(client.content.read(image.target.digest))
    return {str(layer["digest"]) for layer in manifest["layers"]}


LAZY_LABEL = "fsnap.io/lazy"  # on a committed snapshot whose layer is not complete yet
# Counted in a child process: the bench never opens the store's LMDB itself.
COUNT_LAZY = (
    "import sys; from pathlib import Path; from fsnap.client import Client\n"
    "with Client(Path(sys.argv[1])) as c:\n"
    f"    print(sum(1 for i in c.snapshots.walk([]) if {LAZY_LABEL!r} in i.labels))\n"
)


# The files the lazy layers of a store have fetched, as a prefetch list (``/``-rooted).
LIST_PRESENT = (
    "import sys; from pathlib import Path; from fsnap.client import Client\n"
    "from fsnap.lazy.state import present\n"
    "with Client(Path(sys.argv[1])) as c:\n"
    "    for i in c.snapshots.walk([]):\n"
    f"        if {LAZY_LABEL!r} in i.labels:\n"
    "            print(''.join(f'/{p}\\n' for p in sorted(present(c.db, i.name))), end='')\n"
)


def record_prefetch(work: Path, ref: str) -> Path:
    """Run the program once on a lazy mount without background fetch; the files fetched
    by its first output (recorded at unmount), as a ``--prefetch-from`` list."""
    root, mnt = work / "record", work / "record-mnt"
    with fsnap_mounted(root, mnt, "--lazy", "--pull", "--no-background-fetch", ref):
        first_output(mnt)
    listed = work / "prefetch.list"
    listed.write_text(
        check([str(services.REPO / ".venv/bin/python"), "-c", LIST_PRESENT, str(root)])
    )
    print(f"recorded a prefetch list of {len(listed.read_text().split())} files")
    return listed


def lazy_layers(root: Path) -> int:
    """How many of ``root``'s snapshots are still lazy."""
    return int(check([str(services.REPO / ".venv/bin/python"), "-c", COUNT_LAZY, str(root)]))


def wait_complete(root: Path, digests: set[str], started: float) -> float | None:
    """Seconds from ``started`` until the image is complete in ``root``: no snapshot is
    lazy any more (when lazy ones were seen at all), else every layer blob committed."""
    labelled = lazy_layers(root) > 0
    if not labelled:
        print(f"  (no snapshot carries {LAZY_LABEL}: completion judged by the blobs alone)")
    while time.perf_counter() - started < COMPLETE_TIMEOUT:
        if labelled:
            done = lazy_layers(root) == 0
        else:
            listed = check(fsnap(root, "content", "ls"))
            done = all(d in listed for d in digests)
        if done:
            return time.perf_counter() - started
        time.sleep(0.2)
    return None


def lazy_run(work: Path, proxy: throttle.Throttle, ref: str, digests: set[str], tag: str) -> Run:
    root, mnt = work / f"lazy-{tag}", work / f"lazy-{tag}-mnt"
    drop_caches()
    before = proxy.down
    started = time.perf_counter()
    with fsnap_mounted(root, mnt, "--lazy", "--pull", ref):
        first_output(mnt)
        took, fetched = time.perf_counter() - started, proxy.down - before
        complete = wait_complete(root, digests, started)
    return Run(took, fetched, complete)


def fsnap_run(work: Path, proxy: throttle.Throttle, ref: str, tag: str) -> tuple[Run, float]:
    """The full pull + mount start, and how long the pull alone took."""
    root, mnt = work / f"fsnap-{tag}", work / f"fsnap-{tag}-mnt"
    drop_caches()
    before = proxy.down
    started = time.perf_counter()
    check(fsnap(root, "pull", "--plain-http", ref))
    pulled = time.perf_counter() - started
    with fsnap_mounted(root, mnt, ref):
        first_output(mnt)
        took = time.perf_counter() - started
    return Run(took, proxy.down - before), pulled


def ctr_run(work: Path, proxy: throttle.Throttle, ref: str, tag: str) -> Run:
    with services.containerd(work, f"ctrd-{tag}", keep=True) as ctrd:
        mnt = work / f"ctr-{tag}-mnt"
        mnt.mkdir()
        drop_caches()
        before = proxy.down
        started = time.perf_counter()
        check(ctrd.ctr("images", "pull", "--plain-http", ref))
        check(ctrd.ctr("images", "mount", ref, str(mnt)))
        try:
            first_output(mnt)
            took = time.perf_counter() - started
        finally:
            subprocess.run(ctrd.ctr("images", "unmount", "--rm", str(mnt)), capture_output=True)
    return Run(took, proxy.down - before)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench-lazy", description=__doc__)
    parser.add_argument("--work", type=Path, required=True, help="scratch directory")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--mbit", type=float, default=100.0, help="link bandwidth (Mbit/s)")
    parser.add_argument("--rtt-ms", type=float, default=20.0, help="link round trip (ms)")
    parser.add_argument("--prefetch-from", type=Path, help="passed to fsnap convert")
    parser.add_argument(
        "--record-prefetch",
        action="store_true",
        help="also measure the image converted with a prefetch list recorded from the program",
    )
    args = parser.parse_args(argv)

    cache = services.REPO / ".bench"
    rootfs, how = ensure_rootfs(cache)
    info = ensure_images(cache, rootfs)["rootfs"]
    print(f"image ({how}): {info.summary()}")
    results = Results()
    pulls: list[float] = []
    lazy = has_lazy_mount()
    if not lazy:
        results.missing["lazy"] = "this fsnap has no `mount --lazy` (issue 13's read side)"
    with services.registry(args.work) as reg:
        ref = services.push(reg, cache / "images", info)
        path, digests = prepare(args.work, reg.host, ref, args.prefetch_from)
        with throttle.running(int(reg.host.rsplit(":", 1)[1]), args.mbit, args.rtt_ms / 1000) as p:
            esgz = f"127.0.0.1:{p.port}/{path}"
            print(f"serving {esgz} at {args.mbit:g} Mbit/s, {args.rtt_ms:g} ms round trip\n")
            recorded: tuple[str, set[str]] | None = None
            if lazy and args.record_prefetch:
                listed = record_prefetch(args.work, esgz)
                pf_path, pf_digests = prepare(args.work, reg.host, ref, listed, "esgz-pf")
                recorded = (f"127.0.0.1:{p.port}/{pf_path}", pf_digests)
            for r in range(args.rounds):
                print(f"round {r + 1}:", flush=True)
                if lazy:
                    results.add("lazy", lazy_run(args.work, p, esgz, digests, str(r)))
                if recorded is not None:
                    run = lazy_run(args.work, p, recorded[0], recorded[1], f"pf{r}")
                    results.add("lazy+pf", run)
                run, pulled = fsnap_run(args.work, p, esgz, str(r))
                pulls.append(pulled)
                results.add("fsnap", run)
                results.add("ctr", ctr_run(args.work, p, esgz, str(r)))
    report(results, pulls)
    return 0


def report(results: Results, pulls: list[float]) -> None:
    rows = [["start to first output", "median", "MB fetched", "vs fsnap pull+mount"]]
    full = median([r.first_output for r in results.runs.get("fsnap", [])])
    for name, runs in results.runs.items():
        first = median([r.first_output for r in runs])
        fetched = median([float(r.fetched) for r in runs]) / 1e6
        rows.append([name, f"{first:.2f} s", f"{fetched:.1f}", ratio(first, full)])
    print("\n" + table(rows))
    lazy_runs = results.runs.get("lazy", [])
    completes = [r.complete for r in lazy_runs if r.complete is not None]
    if lazy_runs:
        pull = median(pulls)
        if completes:
            done = median(completes)
            print(
                f"\nlazy: image complete in the store after {done:.2f} s, "
                f"full fsnap pull {pull:.2f} s: {ratio(done, pull)} (target <= 1.2x)"
            )
        else:
            print(f"\nlazy: completion not seen within {COMPLETE_TIMEOUT:.0f} s")
        lazy_first = median([r.first_output for r in lazy_runs])
        print(f"lazy vs fsnap pull+mount: {ratio(lazy_first, full)} (target <= 0.2x)")
    for name, why in results.missing.items():
        print(f"{name}: not measured: {why}")
