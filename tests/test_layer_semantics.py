"""Layer cases real images have, from tar through the applier and index to the mount.

- A directory named again in a higher layer (``/tmp`` 1777 in two layers, as docker-built
  images have it) takes that layer's special bits and owner; bits only the lower layer had
  do not stay.
- A whiteout and the same name inside ONE layer, in either order: the whiteout hits only
  the layers beneath (OCI image-spec layer.md), so this layer's entry shows; a directory
  named in the same layer as its whiteout is opaque.
- A hard link across directories.
The expected views are written out here; ``test_containerd_oracle`` checks the same layers
against containerd's own unpack.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from support.mount import commit_chain, mounted_snapshot
from support.tar import TarBuilder

from fsnap.client import Client

pytestmark = [pytest.mark.timeout(120), pytest.mark.needs_root]


def layer_tars(containerd_differs: bool = True) -> list[bytes]:
    """The two layers of these cases, bottom first; ``containerd_differs=False`` leaves out
    the cases where containerd's overlayfs unpack departs from the spec, which fsnap
    follows: it refuses an entry followed by its own whiteout in one layer ("failed to
    convert whiteout file ... file exists"), and for a whiteout followed by a directory of
    that name it shows the lower directory's contents through (the whiteout deletes the
    lower directory: nothing of it may show)."""
    return [_lower(), _upper(containerd_differs)]


def _lower() -> bytes:
    return (
        TarBuilder()
        .dir("tmp", 0o1777)
        .dir("srv", 0o2775, gid=50)
        .dir("srv/data", 0o755)
        .dir("drop", 0o7777, uid=4)
        .dir("d1", 0o755)
        .file("d1/a", b"a")
        .file("d1/b", b"b")
        .dir("d2", 0o755)
        .file("d2/a", b"a")
        .dir("d3", 0o755)
        .file("d3/a", b"a")
        .file("f1", b"lower f1")
        .file("f2", b"lower f2")
        .file("f3", b"lower f3")
        .symlink("s1", "f1")
        .data()
    )


def _upper(containerd_differs: bool) -> bytes:
    tar = (
        TarBuilder()
        .dir("tmp", 0o1777, uid=3, gid=4)
        .file("tmp/x", b"x")
        .dir("srv", 0o3770, uid=9, gid=51)
        .dir("drop", 0o755, uid=6)
        .dir("suid", 0o4711, uid=2)
        .whiteout("d3")
        .file("d3", b"d3 is a file now")
        .whiteout("f2")
        .file("f2", b"upper f2")  # whiteout, then the file
        .whiteout("s1")
        .symlink("s1", "f2")
        .whiteout("f3")
        .dir("ha")
        .file("ha/orig", b"across", mode=0o640, uid=5)
        .dir("hb")
        .hardlink("hb/link", "ha/orig")
    )
    if containerd_differs:
        tar.whiteout("d2").dir("d2", 0o711).file("d2/new", b"n2")  # whiteout, then the dir
        tar.dir("d1", 0o750).whiteout("d1").file("d1/new", b"n1")  # dir, then its whiteout
        tar.file("f1", b"upper f1").whiteout("f1")  # file, then its whiteout
        tar.file("fresh", b"only here").whiteout("fresh")  # nothing below to delete
    return tar.data()


def _mode_owner(path: Path) -> tuple[int, int, int]:
    st = os.lstat(path)
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


def test_redeclared_directories_and_whiteouts_inside_one_layer(tmp_path: Path) -> None:
    root, mnt = tmp_path / "root", tmp_path / "mnt"
    with Client(root) as client:
        top = commit_chain(client, layer_tars())[-1]
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
        assert os.lstat(mnt / "hb/link").st_ino == os.lstat(mnt / "ha/orig").st_ino
        assert os.lstat(mnt / "hb/link").st_nlink == 2
        assert _mode_owner(mnt / "hb/link") == (0o640, 5, 0)
        names = sorted(os.listdir(mnt))
        assert not [n for n in names if n.startswith(".wh.")]
        assert names == sorted(
            ["tmp", "srv", "drop", "suid", "d1", "d2", "d3", "f1", "f2", "s1", "fresh", "ha", "hb"]
        )
