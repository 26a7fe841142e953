"""Paths deeper than PATH_MAX in a writable mount: the daemon works relative to directory
descriptors in the upper directory, so depth does not matter (as on tmpfs); only a single
name over 255 bytes is ENAMETOOLONG. The deep tree survives a remount."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import filesystem_at
from support.overlay import fsnap_overlay
from support.rw import make_image, mounted_rw, shared_dir

from fsnap.client import Client

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_fuse]

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
    done = subprocess.run(
        [sys.executable, "-I", *script, str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
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


# down the deep lower tree one chdir at a time: read the file, then append to it (copy-up)
COPY_UP = """
import os, sys
os.chdir(sys.argv[1])
while os.path.isdir("d" * 200):
    os.chdir("d" * 200)
before = open("lower", "rb").read()
with open("lower", "ab") as f:
    f.write(b"+more")
print(before, open("lower", "rb").read())
"""


def make_deep(base: Path, data: bytes) -> None:
    """``base/d.../lower`` beyond PATH_MAX (made a directory at a time)."""
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(25):
            os.mkdir("d" * 200, dir_fd=fd)
            step = os.open("d" * 200, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = step
        out = os.open("lower", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(out, data)
        os.close(out)
    finally:
        os.close(fd)


def test_copy_up_of_a_lower_file_deeper_than_path_max(tmp_path: Path) -> None:
    """fsnap-overlay's lowers are plain directories (no index), so a lower tree deeper than
    PATH_MAX can be read and its files copied up."""
    lower, upper, work = (tmp_path / name for name in ("lower", "upper", "work"))
    for directory in (lower, upper, work):
        directory.mkdir()
    make_deep(lower, b"deep lower")
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    with fsnap_overlay(options, tmp_path / "mnt") as mnt:
        assert run(["-c", COPY_UP], mnt) == "b'deep lower' b'deep lower+more'\n"
    assert run(["-c", COPY_UP], upper) == "b'deep lower+more' b'deep lower+more+more'\n"
