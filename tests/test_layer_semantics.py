"""Layer cases real images have, from tar through the applier and index to the mount.

- A directory named again in a higher layer (``/tmp`` 1777 in two layers, as docker-built
  images have it) takes that layer's special bits and owner; bits only the lower layer had
  do not stay.
- A whiteout and the same name inside ONE layer, in either order: the whiteout hits only
  the layers beneath (OCI image-spec layer.md), so this layer's entry shows; a directory
  named in the same layer as its whiteout is opaque.
The expected views are written out here; ``test_containerd_oracle`` checks the same cases
against containerd's own unpack.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from mount_helpers import commit_chain, mounted_snapshot
from tar_helpers import TarBuilder

from fsnap.client import Client

pytestmark = pytest.mark.timeout(120)


def _lower() -> bytes:
    return (
        TarBuilder()
        .dir("tmp", 0o1777)
        .dir("srv", 0o2775, gid=50)
        .dir("srv/data", 0o755)
        .dir("drop", 0o7777, uid=4)
        .dir("d1", 0o755).file("d1/a", b"a").file("d1/b", b"b")
        .dir("d2", 0o755).file("d2/a", b"a")
        .dir("d3", 0o755).file("d3/a", b"a")
        .file("f1", b"lower f1").file("f2", b"lower f2").file("f3", b"lower f3")
        .symlink("s1", "f1")
        .data()
    )


def _upper() -> bytes:
    return (
        TarBuilder()
        .dir("tmp", 0o1777, uid=3, gid=4)
        .file("tmp/x", b"x")
        .dir("srv", 0o3770, uid=9, gid=51)
        .dir("drop", 0o755, uid=6)
        .dir("suid", 0o4711, uid=2)
        .dir("d1", 0o750).whiteout("d1").file("d1/new", b"n1")  # dir, then its whiteout
        .whiteout("d2").dir("d2", 0o711).file("d2/new", b"n2")  # whiteout, then the dir
        .whiteout("d3").file("d3", b"d3 is a file now")
        .file("f1", b"upper f1").whiteout("f1")  # file, then its whiteout
        .whiteout("f2").file("f2", b"upper f2")  # whiteout, then the file
        .whiteout("s1").symlink("s1", "f2")
        .file("fresh", b"only here").whiteout("fresh")  # nothing below to delete
        .whiteout("f3")
        .data()
    )


def _mode_owner(path: Path) -> tuple[int, int, int]:
    st = os.lstat(path)
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


def test_redeclared_directories_and_whiteouts_inside_one_layer(tmp_path: Path) -> None:
    root, mnt = tmp_path / "root", tmp_path / "mnt"
    with Client(root) as client:
        top = commit_chain(client, [_lower(), _upper()])[-1]
    with mounted_snapshot(root, top, mnt):
        assert _mode_owner(mnt / "tmp") == (0o1777, 3, 4)
        assert _mode_owner(mnt / "srv") == (0o3770, 9, 51)
        assert _mode_owner(mnt / "drop") == (0o755, 6, 0)
        assert _mode_owner(mnt / "suid") == (0o4711, 2, 0)
        assert sorted(os.listdir(mnt / "tmp")) == ["x"]
        assert sorted(os.listdir(mnt / "srv")) == ["data"]  # a re-declared dir merges

        assert sorted(os.listdir(mnt / "d1")) == ["new"]
        assert _mode_owner(mnt / "d1") == (0o750, 0, 0)
        assert sorted(os.listdir(mnt / "d2")) == ["new"]
        assert _mode_owner(mnt / "d2") == (0o711, 0, 0)
        assert (mnt / "d3").read_bytes() == b"d3 is a file now"
        assert (mnt / "f1").read_bytes() == b"upper f1"
        assert (mnt / "f2").read_bytes() == b"upper f2"
        assert os.readlink(mnt / "s1") == "f2"
        assert (mnt / "fresh").read_bytes() == b"only here"
        assert not (mnt / "f3").exists()
        names = sorted(os.listdir(mnt))
        assert not [n for n in names if n.startswith(".wh.")]
        assert names == sorted(["tmp", "srv", "drop", "suid", "d1", "d2", "d3", "f1", "f2",
                                "s1", "fresh"])
