"""Benchmark: `fsnap analyze` + `fsnap diff` (every layer) against listing the layer tars.

The images are generated here (three layers: a base, then modifications, additions, a
whiteout of a directory and an opaque directory, then more additions) at two sizes, ~5,000
and ~100,000 files; the debootstrap image of ``bench-pull`` is added when ``.bench`` has it.
Each is pushed to a local registry and pulled (so unpacked) by the real CLI; then, side by
side in one run: the two fsnap commands as a user runs them (CLI processes, JSON out) and a
reader that opens every layer blob with Python's tarfile and lists its members (the least
any tar-based tool must do). Medians of ``--rounds``; nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from benchlib.image import blob_path, load
from benchlib.services import push, registry
from benchlib.timing import median, ratio, seconds, table

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from image_builder import Blob, Image, make_image, make_layer, tar_info  # noqa: E402

FSNAP = Path(sys.executable).with_name("fsnap")
Members = list[tuple[tarfile.TarInfo, bytes | None]]


def generated(files: int) -> Image:
    """Three layers over ``files`` files: 80 % base, then changes, then additions."""
    per_dir = 100
    base_count = files * 8 // 10
    base: Members = []
    for d in range(base_count // per_dir):
        base.append((tar_info(f"d{d}", tarfile.DIRTYPE, mode=0o755), None))
        for f in range(per_dir):
            data = f"{d}/{f}\n".encode() * 4
            base.append((tar_info(f"d{d}/f{f}", size=len(data)), data))
    dirs = base_count // per_dir
    middle: Members = []
    for d in range(0, dirs // 4):  # modify a quarter of the files of a quarter of the dirs
        middle.append((tar_info(f"d{d}", tarfile.DIRTYPE, mode=0o755), None))
        for f in range(0, per_dir, 4):
            data = f"changed {d}/{f}\n".encode() * 8
            middle.append((tar_info(f"d{d}/f{f}", size=len(data)), data))
    middle.append((tar_info(f"d{dirs - 1}/.wh..wh..opq"), b""))
    middle.append((tar_info(f".wh.d{dirs - 2}"), b""))
    top: Members = [(tar_info("new", tarfile.DIRTYPE, mode=0o755), None)]
    for f in range(files - base_count - len(middle)):
        data = f"new {f}\n".encode() * 16
        top.append((tar_info(f"new/n{f}", size=len(data)), data))
    return make_image([make_layer(members) for members in (base, middle, top)])


def push_generated(reg: object, name: str, image: Image) -> str:
    with reg.pusher() as pusher:  # type: ignore[attr-defined]
        for blob in image.blobs:
            pusher.push_blob(f"bench/{name}", blob)
        pusher.push_manifest(f"bench/{name}", "1", image.manifest)
    return f"{reg.host}/bench/{name}:1"  # type: ignore[attr-defined]


def list_tars(blobs: list[bytes]) -> int:
    """What a tar-based inspector must at least do: read every member header."""
    count = 0
    for data in blobs:
        import io

        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            count += len(tar.getmembers())
    return count


def fsnap(root: Path, *args: str) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        [str(FSNAP), "--root", str(root), *args], capture_output=True, text=True, check=False
    )
    took = time.perf_counter() - started
    if done.returncode not in (0, 20):
        raise SystemExit(f"fsnap {' '.join(args)} failed: {done.stderr}")
    return took


def in_process(root: Path, ref: str) -> float:
    """The same answers through the library (no interpreter start, no JSON printing)."""
    from fsnap.client import Client
    from fsnap.inspect import changes, waste
    from fsnap.inspect.layers import resolve, unpacked_layers

    started = time.perf_counter()
    with Client(root) as client:
        layers = unpacked_layers(client.snapshots, resolve(client.content, client.images, ref))
        waste.analyze(layers)
        for _ in changes.each_layer(layers):
            pass
    return time.perf_counter() - started


def measure(work: Path, ref: str, blobs: list[bytes], name: str, rounds: int) -> list[str]:
    root = work / f"root-{name}"
    subprocess.run([str(FSNAP), "--root", str(root), "pull", ref], check=True, capture_output=True)
    analyze, diff, tars, library = [], [], [], []
    entries = 0
    for _ in range(rounds):
        analyze.append(fsnap(root, "analyze", ref, "--json"))
        diff.append(fsnap(root, "diff", ref, "--json"))
        library.append(in_process(root, ref))
        started = time.perf_counter()
        entries = list_tars(blobs)
        tars.append(time.perf_counter() - started)
    both = median(analyze) + median(diff)
    return [
        name,
        str(entries),
        seconds(median(analyze)),
        seconds(median(diff)),
        seconds(both),
        seconds(median(tars)),
        ratio(median(tars), both),
        seconds(median(library)),
        ratio(median(tars), median(library)),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench-inspect")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="5000,100000", help="generated file counts")
    args = parser.parse_args(argv)
    rows = [
        [
            "image",
            "tar entries",
            "analyze",
            "diff (all layers)",
            "fsnap total",
            "tarfile listing",
            "tarfile / fsnap",
            "library (both)",
            "tarfile / library",
        ]
    ]
    with registry(args.work) as reg:
        for files in (int(s) for s in args.sizes.split(",")):
            image = generated(files)
            ref = push_generated(reg, f"gen{files}", image)
            blobs = [layer.blob.data for layer in image.layers]
            rows.append(measure(args.work, ref, blobs, f"generated-{files}", args.rounds))
            print(table(rows), flush=True)
        images_dir = REPO / ".bench" / "images"
        info = load(images_dir, "rootfs")
        if info is not None:
            ref = push(reg, images_dir, info)
            blobs = [
                blob_path(images_dir, info.name, str(layer["digest"])).read_bytes()
                for layer in info.layers
            ]
            rows.append(measure(args.work, ref, blobs, "rootfs (bench-pull)", args.rounds))
    print()
    print(table(rows))
    print(
        "fsnap times are whole CLI runs (interpreter start included); 'library' is the "
        "same analyze + every-layer diff in one process, without start-up or printing."
    )
    return 0


__all__ = ["Blob", "main", "make_image"]
