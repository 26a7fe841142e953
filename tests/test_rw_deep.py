"""Paths deeper than PATH_MAX in a writable mount: the daemon works relative to directory
descriptors in the upper directory, so depth does not matter (as on tmpfs); only a single
name over 255 bytes is ENAMETOOLONG. The deep tree survives a remount."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import filesystem_at
from rw_helpers import make_image, mounted_rw, shared_dir

from fsnap.client import Client

OPS = Path(__file__).with_name("deep_ops.py")
# walk down the deep tree again (one chdir per step) and list its bottom
WALK = """
import os, sys
os.chdir(sys.argv[1])
while os.path.isdir("d" * 200):
    os.chdir("d" * 200)
print(sorted(os.listdir(".")), os.listdir("sub2"), open("sub2/file", "rb").read())
"""


def run(script: list[str], directory: Path) -> str:
    done = subprocess.run([sys.executable, "-I", *script, str(directory)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture
def shared() -> Iterator[Path]:
    with shared_dir() as path:
        yield path


def test_deeper_than_path_max(tmp_path: Path, shared: Path) -> None:
    with filesystem_at("tmpfs", tmp_path / "kernel") as kernel:
        assert run([str(OPS)], kernel) == "ok\n"  # what a kernel file system does
        want = run(["-c", WALK], kernel)
    root = tmp_path / "root"
    top = make_image(root)
    with Client(root) as client:
        client.snapshots.prepare("rw", top)
    mnt = shared / "mnt"
    with mounted_rw(root, "rw", mnt):
        assert run([str(OPS)], mnt / "play") == "ok\n"
        assert run(["-c", WALK], mnt / "play") == want
    with mounted_rw(root, "rw", mnt):
        assert run(["-c", WALK], mnt / "play") == want
