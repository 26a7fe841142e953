"""atime is its own timestamp: in writable mounts (``touch -a``/``-m``, ``utimensat`` with
UTIME_NOW and UTIME_OMIT on either field, ``futimens``) exactly as on tmpfs, kept across a
remount and a commit; read-only views show the atime the layer recorded (the PAX ``atime``
record, else the mtime)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import filesystem_at
from support.mount import mounted_snapshot
from support.rw import make_image, mounted_rw, shared_dir
from support.tar import TarBuilder

from fsnap.client import Client
from fsnap.diff.active import commit_active

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_fuse]

OPS = Path(__file__).with_name("rw_times_ops.py")
LOWER_MTIME, LOWER_ATIME = "1650000000.25", "1640000000.5"
NS = 1_000_000_000


def _ns(text: str) -> int:
    whole, _, frac = text.partition(".")
    return int(whole) * NS + int((frac + "0" * 9)[:9])


def layer_tars() -> list[bytes]:
    return [
        TarBuilder()
        .dir("play", 0o777)
        .file("play/lower.txt", b"lower\n", 0o666, mtime=LOWER_MTIME, atime=LOWER_ATIME)
        .file("play/plain.txt", b"plain\n", mtime=LOWER_MTIME)
        .data()
    ]


def run_ops(directory: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-I", str(OPS), str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


@pytest.fixture
def kernel_results(tmp_path: Path) -> dict[str, object]:
    """The operations on tmpfs, ``lower.txt`` carrying the layer's times."""
    with filesystem_at("tmpfs", tmp_path / "kernel") as base:
        (base / "lower.txt").write_bytes(b"lower\n")
        os.utime(base / "lower.txt", ns=(_ns(LOWER_ATIME), _ns(LOWER_MTIME)))
        return run_ops(base)


@pytest.fixture
def shared() -> Iterator[Path]:
    with shared_dir() as path:
        yield path


def test_writable_mount_keeps_atime_like_tmpfs(
    tmp_path: Path, shared: Path, kernel_results: dict[str, object]
) -> None:
    root = tmp_path / "root"
    top = make_image(root, layer_tars())
    with Client(root) as client:
        client.snapshots.prepare("rw", top)
    mnt = shared / "mnt"
    with mounted_rw(root, "rw", mnt):
        got = run_ops(mnt / "play")
        before = {name: os.stat(mnt / "play" / name) for name in ("lower.txt", "new.txt")}
    assert kernel_results["touch-a"] != kernel_results["touch-m"]  # the ops tell them apart
    mismatched = {
        op: (kernel_results[op], got.get(op))
        for op in kernel_results
        if got.get(op) != kernel_results[op]
    }
    assert not mismatched, f"tmpfs vs writable mount: {mismatched}"
    with mounted_rw(root, "rw", mnt):
        for name, st in before.items():
            again = os.stat(mnt / "play" / name)
            assert (again.st_atime_ns, again.st_mtime_ns) == (st.st_atime_ns, st.st_mtime_ns)
    with Client(root) as client:
        commit_active(client.snapshots, "done", "rw")
    with mounted_snapshot(root, "done", mnt):
        st = os.stat(mnt / "play" / "new.txt")
        assert (st.st_atime_ns, st.st_mtime_ns) == (
            before["new.txt"].st_atime_ns,
            before["new.txt"].st_mtime_ns,
        )


def test_read_only_view_shows_the_recorded_atime(tmp_path: Path) -> None:
    root = tmp_path / "root"
    top = make_image(root, layer_tars())
    with mounted_snapshot(root, top, tmp_path / "mnt") as _:
        recorded = os.stat(tmp_path / "mnt" / "play" / "lower.txt")
        plain = os.stat(tmp_path / "mnt" / "play" / "plain.txt")
    assert (recorded.st_atime_ns, recorded.st_mtime_ns) == (_ns(LOWER_ATIME), _ns(LOWER_MTIME))
    assert plain.st_atime_ns == plain.st_mtime_ns == _ns(LOWER_MTIME)
