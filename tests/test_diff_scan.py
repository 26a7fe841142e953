"""scan_snapshot: a snapshot directory read back into the entries apply_layer indexed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from support.diff import LONG_DIR, NON_UTF8, XATTRS, apply_bytes, by_path, rich_layer
from support.tar import TarBuilder

from fsnap.archive.entry import Entry
from fsnap.diff.scan import _data_bytes, scan_snapshot

pytestmark = [pytest.mark.needs_root]


def test_scan_as_root_equals_the_applied_index(tmp_path: Path) -> None:
    root = tmp_path / "layer"
    applied = apply_bytes(rich_layer(), root)
    scanned = scan_snapshot(root)
    assert scanned == applied.entries
    found = by_path(scanned)
    assert found["bin/tool"].xattrs == XATTRS
    assert (found["bin/tool2"].kind, found["bin/tool2"].link) == ("hardlink", "bin/tool")
    assert found["etc/removed"].kind == "whiteout"
    assert found["var/cache"].opaque
    assert not found["var"].opaque
    assert found["dev/null"].kind == "char"
    assert found["dev/null"].devminor == 3
    assert found["bin"].mtime == 1_700_000_001_500_000_000
    assert f"{LONG_DIR}/{'f' * 100}" in found
    assert NON_UTF8 in found
    assert not any(name.startswith(".wh.") for e in scanned for name in [e.name])


def test_scan_unprivileged_layer_takes_metadata_from_overrides(tmp_path: Path) -> None:
    """Placeholders for devices, owners and non-user xattrs only in the index: the
    overrides restore them; size and mtime still come from disk."""
    root = tmp_path / "layer"
    applied = apply_bytes(rich_layer(), root, privileged=False)
    assert stat.S_ISREG(os.lstat(root / "dev/null").st_mode)  # a placeholder
    without = by_path(scan_snapshot(root))
    assert without["dev/null"].kind == "file"
    assert without["bin/tool"].uid == 0
    overrides = {e.path: e for e in applied.entries}
    assert scan_snapshot(root, overrides) == applied.entries


def test_overrides_never_invent_or_resurrect_paths(tmp_path: Path) -> None:
    root = tmp_path / "layer"
    applied = apply_bytes(TarBuilder().dir("a").file("a/f", b"xy").data(), root)
    overrides = {e.path: e for e in applied.entries}
    overrides["gone"] = Entry("gone", "file", size=9)
    overrides["a/f"] = Entry("a/f", "dir", mode=0o700)  # stale: disk holds a file now
    (root / "a/f").write_bytes(b"changed")
    found = by_path(scan_snapshot(root, overrides))
    assert set(found) == {"a", "a/f"}
    assert (found["a/f"].kind, found["a/f"].size) == ("file", 7)


def test_whiteout_beside_a_directory_of_the_layer_makes_it_opaque(tmp_path: Path) -> None:
    root = tmp_path / "upper"
    (root / "d").mkdir(parents=True)
    (root / "d" / "new").write_text("n")
    (root / ".wh.d").touch()
    (root / ".wh.f").touch()
    found = by_path(scan_snapshot(root))
    assert found["d"].kind == "dir"
    assert found["d"].opaque
    assert found["f"].kind == "whiteout"
    assert set(found) == {"d", "d/new", "f"}


def test_hard_links_first_path_in_walk_order_owns_the_inode(tmp_path: Path) -> None:
    root = tmp_path / "upper"
    (root / "a-b").mkdir(parents=True)
    (root / "a").mkdir()
    (root / "a" / "x").write_text("same inode")
    os.link(root / "a" / "x", root / "a-b" / "y")
    os.link(root / "a" / "x", root / "z")
    found = by_path(scan_snapshot(root))
    assert found["a/x"].kind == "file"
    assert (found["a-b/y"].kind, found["a-b/y"].link) == ("hardlink", "a/x")
    assert (found["z"].kind, found["z"].link, found["z"].size) == ("hardlink", "a/x", 10)


def test_overlay_format_whiteouts_and_opaque_xattrs(tmp_path: Path) -> None:
    root = tmp_path / "upper"
    for d in ("o1", "o2", "plain"):
        (root / d).mkdir(parents=True)
    os.mknod(root / "gone", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    os.setxattr(root / "o1", "trusted.overlay.opaque", b"y")
    os.setxattr(root / "o2", "user.fuseoverlayfs.opaque", b"y")
    os.setxattr(root / "plain", "trusted.overlay.origin", b"\x00junk")
    found = by_path(scan_snapshot(root, overlay=True))
    assert found["gone"].kind == "whiteout"
    assert found["o1"].opaque
    assert found["o2"].opaque
    assert not found["plain"].opaque
    assert all(not e.xattrs for e in found.values())
    as_layer = by_path(scan_snapshot(root))
    assert as_layer["gone"].kind == "char"
    assert not as_layer["o1"].opaque


def test_root_entry_only_when_the_index_names_it(tmp_path: Path) -> None:
    root = tmp_path / "layer"
    applied = apply_bytes(TarBuilder().dir("./", 0o700).file("f").data(), root)
    assert "" in by_path(applied.entries)
    assert "" not in by_path(scan_snapshot(root))
    with_root = by_path(scan_snapshot(root, {e.path: e for e in applied.entries}))
    assert with_root[""].mode == 0o700


def test_holes_are_counted_where_the_file_system_can_tell_and_nowhere_else(
    tmp_path: Path,
) -> None:
    """``SEEK_DATA`` gives a sparse file's data; a descriptor whose file system refuses it
    (a pipe's ESPIPE here, EINVAL or EOPNOTSUPP elsewhere) counts as all data instead of
    failing the commit's scan."""
    sparse = tmp_path / "sparse"
    with open(sparse, "wb") as f:
        f.truncate(64 << 20)
        f.seek(32 << 20)
        f.write(b"x" * 4096)
    fd = os.open(sparse, os.O_RDONLY)
    try:
        assert 4096 <= _data_bytes(fd, 64 << 20) < (64 << 20)  # tmpfs, ext4, xfs: holes seen
    finally:
        os.close(fd)
    read_end, write_end = os.pipe()
    try:
        assert _data_bytes(read_end, 1 << 20) == 1 << 20
    finally:
        os.close(read_end)
        os.close(write_end)
