"""POSIX behaviour of a writable mount (real FUSE, real snapshots), as root and as 65534.

The operations run in a child process (``rw_posix_ops.py``), never in the daemon's thread;
the on-disk format of the active snapshot is checked after them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from mount_helpers import listing
from rw_helpers import make_image, mounted_rw, run_ops, shared_dir

from fsnap.client import Client


@pytest.fixture
def active(fs_base: Path) -> Iterator[tuple[Path, str, Path]]:
    """(fsnap root, active key, mount point) over the lower image of ``rw_helpers``, the
    root on disk, tmpfs and overlayfs in turn."""
    root = fs_base / "root"
    top = make_image(root)
    with Client(root) as client:
        client.snapshots.prepare("rw", top)
    with shared_dir() as shared:
        yield root, "rw", shared / "mnt"


@pytest.mark.parametrize("as_nobody", [False, True], ids=["root", "uid65534"])
def test_posix_operations(active: tuple[Path, str, Path], as_nobody: bool) -> None:
    root, key, mnt = active
    with mounted_rw(root, key, mnt):
        done = run_ops(mnt, as_nobody)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.count("ok ") == 16, done.stdout
        before = listing(mnt)
    with mounted_rw(root, key, mnt):
        assert listing(mnt) == before  # unmounting keeps the changes; remounting shows them
    with Client(root) as client:
        upper = client.snapshots.dir(key)
    _check_upper_format(upper)


def _check_upper_format(upper: Path) -> None:
    """Only the changes, whiteouts and opaque markers as ``fsnap.mount.upper`` says."""
    play = upper / "play"
    assert (play / ".wh.mv-src.txt").is_file()
    assert (play / ".wh.mv-src.txt").stat().st_size == 0
    assert not (play / ".wh.gone.txt").exists()  # recreated: the file replaces it
    assert (play / "gone.txt").read_bytes() == b"again"
    assert (play / ".wh.tree").is_file()  # renamed away (twice)
    assert (play / "tree2" / ".wh..wh..opq").is_file()  # a moved lower directory
    assert (play / "tree2" / "sub" / "b").read_bytes() == b"deep\n"
    assert (play / "ldir" / "moved" / ".wh..wh..opq").is_file()
    assert (play / "opq" / ".wh..wh..opq").is_file()  # removed and made again
    assert sorted(os.listdir(play / "opq")) == [".wh..wh..opq", "fresh"]
    assert not (play / "lower2.txt.orig").exists()
    assert not (upper / "rootonly" / "secret").exists()  # never changed: not copied up
    for untouched in ("ldir/f", "trunc1.orig"):
        assert not (play / untouched).exists()
    st1, st2 = os.lstat(play / "hl1"), os.lstat(play / "hl2")
    assert st1.st_ino == st2.st_ino  # copied up once, the other name linked to it
    assert (play / "hl1").read_bytes() == b"linked\n2"
