"""Applying a layer (``fsnap.archive.apply``): what the archive tests did not pin down,
found by reading the module for its mutation run (docs/mutation.md): the declared-size
limit at its boundary, a setgid snapshot root, whiteout metadata, and the same path
declared twice as a directory."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest
from support.tar import TarBuilder

from fsnap.archive.apply import ApplyResult, apply_layer, fixup_implicit
from fsnap.archive.entry import Entry
from fsnap.errors import InvalidArgument

# No mount, no registry: these tests take seconds, so a minute means a hang.
pytestmark = pytest.mark.timeout(60)

PRIVILEGED = os.geteuid() == 0


def apply(tar: TarBuilder, root: Path, max_size: int | None = None) -> dict[str, Entry]:
    result: ApplyResult = apply_layer(io.BytesIO(tar.data()), root, sync=False, max_size=max_size)
    return {e.path: e for e in result.entries}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    return r


def sized(total: int) -> TarBuilder:
    """Files declaring ``total`` bytes in all, beside a directory, a symlink and a hard
    link (which declare none)."""
    return (
        TarBuilder()
        .dir("d")
        .file("d/a", b"a" * (total - 10))
        .symlink("d/l", "a")
        .hardlink("d/h", "d/a")
        .file("d/b", b"b" * 10)
    )


def test_files_declaring_exactly_the_size_limit_apply(root: Path) -> None:
    idx = apply(sized(1000), root, max_size=1000)
    assert (idx["d/a"].size, idx["d/b"].size) == (990, 10)


def test_one_byte_over_the_size_limit_is_refused(root: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"declare over 1000 bytes \(at member 'd/b'\)"):
        apply(sized(1001), root, max_size=1000)


@pytest.mark.skipif(not PRIVILEGED, reason="sets owners")
def test_a_setgid_root_does_not_give_its_group_to_the_layer(root: Path) -> None:
    """New nodes in a setgid directory take its group: the applier must then set the
    owner the tar says even where it equals its own (root:root here)."""
    os.chown(root, 0, 50)
    os.chmod(root, 0o2775)
    apply(TarBuilder().file("f", b"x", uid=0, gid=0).dir("d", uid=0, gid=0), root)
    assert (os.lstat(root / "f").st_gid, os.lstat(root / "d").st_gid) == (0, 0)


def test_whiteout_metadata_is_ignored(root: Path) -> None:
    """``.wh..wh.`` names (aufs' hard-link and metadata files) are neither entries nor
    whiteouts, and nothing of them is written."""
    idx = apply(TarBuilder().dir("d").file("d/.wh..wh.plnk", b"aufs").file("d/f", b"f"), root)
    assert sorted(idx) == ["d", "d/f"]
    assert sorted(os.listdir(root / "d")) == ["f"]


@pytest.mark.parametrize(("first", "last"), [(0o755, 0o1777), (0o1777, 0o755), (0o2750, 0o700)])
def test_a_directory_declared_twice_keeps_the_last_metadata(
    root: Path, first: int, last: int
) -> None:
    """``/tmp`` declared twice with other modes: the last header wins, on disk too, with
    its special bits (the two headers merge: contents stay)."""
    tar = TarBuilder().dir("tmp", first).file("tmp/x", b"x").dir("tmp", last)
    idx = apply(tar, root)
    assert idx["tmp"].mode == last
    assert stat.S_IMODE(os.lstat(root / "tmp").st_mode) == last
    assert (root / "tmp/x").read_bytes() == b"x"


def test_an_implicit_root_takes_the_lower_metadata_in_the_index_only(root: Path) -> None:
    """An opaque marker at the top makes the root an implicit, opaque entry: fixing
    implicit directories up gives it the lower root's metadata in the index, and leaves
    the snapshot's own root directory alone on disk."""
    os.chmod(root, 0o700)
    result = apply_layer(io.BytesIO(TarBuilder().opaque("").data()), root, sync=False)
    lower = {"": Entry("", "dir", mode=0o1777, uid=7)}
    fixup_implicit(root, result.entries, lower.get)
    (top,) = [e for e in result.entries if e.path == ""]
    assert (top.implicit, top.opaque, top.mode, top.uid) == (True, True, 0o1777, 7)
    assert stat.S_IMODE(os.lstat(root).st_mode) == 0o700


def test_an_implicit_directory_over_a_lower_file_is_0755_root(root: Path) -> None:
    """Below, ``etc`` is a file: the implicit directory takes nothing from it."""
    result = apply_layer(io.BytesIO(TarBuilder().file("etc/x", b"x").data()), root, sync=False)
    lower = {"etc": Entry("etc", "file", mode=0o600, uid=5, gid=6, xattrs={"user.k": b"v"})}
    fixup_implicit(root, result.entries, lower.get)
    (etc,) = [e for e in result.entries if e.path == "etc"]
    assert (etc.mode, etc.uid, etc.gid, etc.xattrs) == (0o755, 0, 0, {})
    assert stat.S_IMODE(os.lstat(root / "etc").st_mode) == 0o755
