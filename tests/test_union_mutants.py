"""The union engine (``fsnap/mount/union.py``) driven directly, no mount: each test pins
down a rule that a plausible slip in the engine would break while ``tests/test_union.py``
passes (issue 18), so the mutation run of ``union`` kills those mutants in a second.

The helpers (``Store``, ``run``) are ``test_union``'s: a lower layer, an upper directory
and the engine over them."""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
from pathlib import Path

import pytest
from test_union import CALLER, DIR, PRIVILEGED, Store, _errno, _linked, _plain, run

from fsnap.archive.format import OPAQUE_MARKER
from fsnap.diff.scan import scan_snapshot
from fsnap.mount.tree import Layer, MergedTree
from fsnap.mount.union import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    AttrChange,
    NewObject,
    Overrides,
    Union,
    _Move,
)
from fsnap.mount.upper import Upper

needs_root = pytest.mark.skipif(not PRIVILEGED, reason="owners on disk need root")
FILE = NewObject("file", 0o100644)


def reopen(store: Store, privileged: bool = PRIVILEGED) -> Union:
    """The engine of a second mount of the same snapshot: the tree built again from the
    lower layer and the upper directory as the first mount left it."""
    tree = MergedTree.build(
        [
            Layer(store.lower, scan_snapshot(store.lower), "lower"),
            Layer(store.fs, scan_snapshot(store.fs), "upper", upper=True),
        ]
    )
    sink = Overrides(put=store._put, delete=store._delete)
    store.union = Union(tree, Upper(store.fs, store.work, privileged), sink)
    return store.union


def test_the_kernel_abi_numbers() -> None:
    """The kernel passes renameat2's flags as numbers (linux/fs.h)."""
    assert (RENAME_NOREPLACE, RENAME_EXCHANGE) == (1, 2)


def test_operand_records_are_frozen_and_slotted() -> None:
    new = NewObject("file", 0o644)
    with pytest.raises(dataclasses.FrozenInstanceError):
        new.mode = 0o600  # type: ignore[misc]
    change = AttrChange(mode=1)
    with pytest.raises(AttributeError):
        change.color = 1  # type: ignore[attr-defined]
    assert dataclasses.fields(_Move)
    move = _Move.__new__(_Move)
    with pytest.raises(dataclasses.FrozenInstanceError):
        move.name_old = b"x"  # type: ignore[misc]


def test_a_second_mount_knows_what_the_upper_directory_holds(tmp_path: Path) -> None:
    """Marks come from the tree: a remount removes upper files from disk, leaves a
    whiteout only for names the lower layers have, and keeps opaque directories opaque."""
    store = Store(tmp_path, _plain)
    union, root = store.union, store.ino("")
    run(union.make, root, b"mine", FILE, CALLER)
    run(union.set_attrs, store.ino("f"), AttrChange(mode=0o600), None)
    run(union.unlink, store.ino("d"), b"f")
    run(union.rmdir, root, b"d")
    run(union.make, root, b"d", DIR, CALLER)
    union = reopen(store)
    root = store.ino("")
    assert union.is_upper(store.node("mine"))
    assert union.is_upper(store.node("f"))
    assert not union.is_upper(store.node("p"))
    assert union.is_opaque(store.node("d"))
    run(union.unlink, root, b"mine")
    run(union.unlink, root, b"f")
    assert not (store.fs / "mine").exists()
    assert not (store.fs / ".wh.mine").exists()  # nothing below to hide
    assert (store.fs / ".wh.f").exists()
    assert not (store.fs / "f").exists()
    sub = run(union.make, store.ino("d"), b"f", DIR, CALLER)
    assert not union.is_opaque(sub)  # below an opaque directory nothing shows
    again = run(union.make, root, b"f", DIR, CALLER)
    assert not union.is_opaque(again)  # a file was below, not a directory
    run(union.unlink, root, b"p")
    assert (store.fs / ".wh.p").exists()


def test_a_second_mount_keeps_hard_links_as_one_node(tmp_path: Path) -> None:
    store = Store(tmp_path, _linked)
    run(store.union.set_attrs, store.ino("x"), AttrChange(mode=0o640), None)
    union = reopen(store)
    root = store.ino("")
    node = store.node("x")
    assert store.node("y") is node
    assert node.nlink == 2
    run(union.unlink, root, b"x")
    assert (node.nlink, union.path(node)) == (1, b"y")
    run(union.set_attrs, node.ino, AttrChange(mode=0o600), None)
    assert stat.S_IMODE(os.lstat(store.fs / "y").st_mode) == 0o600


def test_an_unprivileged_rename_records_a_lower_directory_at_its_new_name(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path, _plain, privileged=False)
    union, root = store.union, store.ino("")
    run(union.set_attrs, store.ino("d"), AttrChange(uid=7), None)
    assert store.recorded["d"].uid == 7
    run(union.rename, root, b"d", root, b"e", 0)
    assert store.recorded["e"].uid == 7
    assert "d" not in store.recorded
    run(union.set_attrs, store.ino("e"), AttrChange(gid=8), None)
    assert store.recorded["e"].gid == 8
    assert "d" not in store.recorded


def _holds(lower: Path) -> None:
    (lower / "t").mkdir()
    (lower / "t/x").write_bytes(b"x")


def test_a_rename_over_a_directory_holding_only_whiteouts_clears_it(tmp_path: Path) -> None:
    store = Store(tmp_path, _holds)
    union, root = store.union, store.ino("")
    run(union.unlink, store.ino("t"), b"x")
    assert (store.fs / "t/.wh.x").exists()
    moved = run(union.make, root, b"s", DIR, CALLER)
    run(union.make, moved.ino, b"in", FILE, CALLER)
    run(union.rename, root, b"s", root, b"t", 0)
    assert store.node("t") is moved
    assert store.names("t") == [b"in"]
    assert sorted(os.listdir(store.fs / "t")) == sorted([OPAQUE_MARKER, "in"])
    assert union.is_opaque(moved)
    upper = store.upper()
    assert upper["t"].opaque
    assert "s" not in upper  # a new name leaves no whiteout


def test_link_counts_of_new_moved_and_removed_directories(tmp_path: Path) -> None:
    store = Store(tmp_path, _plain)
    union, root = store.union, store.ino("")
    top = store.node("")
    start = top.nlink
    new = run(union.make, root, b"n", DIR, CALLER)
    assert (new.nlink, top.nlink) == (2, start + 1)
    file = run(union.make, root, b"g", FILE, CALLER)
    assert file.nlink == 1
    assert top.nlink == start + 1  # a file is no subdirectory
    run(union.rename, root, b"n", store.ino("d"), b"n", 0)
    assert (top.nlink, store.node("d").nlink) == (start, 3)
    run(union.rename, store.ino("d"), b"n", root, b"g", RENAME_EXCHANGE)
    assert (top.nlink, store.node("d").nlink) == (start + 1, 2)
    assert store.node("g") is new
    run(union.rmdir, root, b"g")
    assert top.nlink == start
    run(union.unlink, store.ino("d"), b"n")
    assert file.nlink == 0


def test_renameat2_flags_given_as_numbers(tmp_path: Path) -> None:
    store = Store(tmp_path, _plain)
    union, root = store.union, store.ino("")
    f, d = store.node("f"), store.node("d")
    run(union.rename, root, b"f", root, b"d", 2)
    assert (store.node("d"), store.node("f")) == (f, d)
    _errno(errno.EEXIST, union.rename, root, b"f", root, b"d", 1)
    _errno(errno.EINVAL, union.rename, root, b"f", root, b"d", 3)
    # exchanging a directory with a name inside it moves it below itself
    _errno(errno.EINVAL, union.rename, store.ino("f"), b"f", root, b"f", 2)
    assert (store.fs / "d").read_bytes() == b"lower"


def test_an_unlinked_upper_file_opens_from_no_lower_content(tmp_path: Path) -> None:
    store = Store(tmp_path, _plain)
    union, root = store.union, store.ino("")
    node, fd = run(union.create_file, root, b"c", 0o100644, CALLER)
    os.close(fd)
    run(union.unlink, root, b"c")
    _errno(errno.EIO, union.open, node.ino, os.O_RDONLY)
    copied = run(union.set_attrs, store.ino("f"), AttrChange(mode=0o600), None)
    run(union.unlink, root, b"f")
    _errno(errno.EIO, union.open, copied.ino, os.O_RDONLY)


def test_open_flags_reaching_the_lower_and_the_upper_file(tmp_path: Path) -> None:
    store = Store(tmp_path, _plain)
    union = store.union
    f = store.node("f")
    node, fd = run(union.open, f.ino, os.O_RDONLY | os.O_APPEND)
    try:
        assert not union.is_upper(node)
        assert os.pread(fd, 10, 0) == b"lower"
    finally:
        os.close(fd)
    # an upper file opened again to write and truncate: truncated on disk, writable
    node, fd = run(union.open, f.ino, os.O_WRONLY)
    os.close(fd)
    assert (store.fs / "f").read_bytes() == b"lower"
    node, fd = run(union.open, f.ino, os.O_WRONLY | os.O_TRUNC)
    try:
        assert (store.fs / "f").read_bytes() == b""
        assert node.size == 0
        assert run(union.write, fd, node, 0, b"new") == 3
        assert node.size == 3
    finally:
        os.close(fd)
    node, fd = run(union.open, f.ino, os.O_RDWR | os.O_APPEND)
    try:
        assert os.pread(fd, 10, 0) == b"new"
        assert node.size == 3
    finally:
        os.close(fd)


def test_metadata_only_copy_up_keeps_content_and_xattrs(tmp_path: Path) -> None:
    """Issue 18's example: chmod, utime and truncate of a lower file with xattrs."""

    def tagged(lower: Path) -> None:
        for name in ("a", "b", "c"):
            (lower / name).write_bytes(b"content")
            os.setxattr(lower / name, "user.cap", b"v")

    store = Store(tmp_path, tagged)
    union = store.union
    run(union.set_attrs, store.ino("a"), AttrChange(mode=0o700), None)
    run(union.set_attrs, store.ino("b"), AttrChange(atime=1, mtime=2), None)
    run(union.set_attrs, store.ino("c"), AttrChange(size=3), None)
    b = os.lstat(store.fs / "b")
    assert (b.st_atime_ns, b.st_mtime_ns) == (1, 2)
    assert (store.node("b").atime, store.node("b").mtime) == (1, 2)
    upper = store.upper()
    for name in ("a", "b", "c"):
        assert store.node(name).xattrs == {b"user.cap": b"v"}
        if PRIVILEGED:
            assert upper[name].xattrs == {"user.cap": b"v"}
    assert (store.fs / "a").read_bytes() == b"content"
    assert (store.fs / "b").read_bytes() == b"content"
    assert (store.fs / "c").read_bytes() == b"con"
    assert store.node("a").size == 7
    assert store.node("c").size == 3


@needs_root
def test_each_owner_change_alone_reaches_disk(tmp_path: Path) -> None:
    store = Store(tmp_path, _plain, privileged=True)
    union = store.union
    run(union.set_attrs, store.ino("f"), AttrChange(uid=7), None)
    run(union.set_attrs, store.ino("d"), AttrChange(gid=9), None)
    assert os.lstat(store.fs / "f").st_uid == 7
    assert os.lstat(store.fs / "d").st_gid == 9
    assert (store.fs / "f").read_bytes() == b"lower"
    assert store.node("f").uid == 7


def test_unprivileged_owner_changes_alone_are_recorded(tmp_path: Path) -> None:
    store = Store(tmp_path, _plain, privileged=False)
    union = store.union
    run(union.set_attrs, store.ino("d"), AttrChange(gid=9), None)
    assert store.recorded["d"].gid == 9
    run(union.set_attrs, store.ino("d/f"), AttrChange(mode=0o400), None)
    assert store.recorded["d/f"].mode == 0o400
    assert store.recorded["d/f"].size == 5


def test_a_new_object_in_a_plain_directory_keeps_the_callers_group(tmp_path: Path) -> None:
    store = Store(tmp_path, _plain)
    union = store.union
    sub = run(union.make, store.ino("d"), b"s", NewObject("dir", 0o40755), CALLER)
    assert (sub.uid, sub.gid) == CALLER
    assert not sub.mode & stat.S_ISGID
    assert stat.S_IMODE(sub.mode) == 0o755
    asked = run(union.make, store.ino("d"), b"g", NewObject("dir", 0o42750), CALLER)
    assert stat.S_IMODE(asked.mode) == 0o2750  # asked for: kept


def test_a_hard_link_across_directories_copies_up_both_names(tmp_path: Path) -> None:
    def apart(lower: Path) -> None:
        (lower / "a").mkdir()
        (lower / "b").mkdir()
        (lower / "a/x").write_bytes(b"data")
        os.link(lower / "a/x", lower / "b/y")

    store = Store(tmp_path, apart)
    union = store.union
    node = store.node("a/x")
    assert store.node("b/y") is node
    run(union.set_attrs, store.ino("b/y"), AttrChange(mode=0o600), None)
    assert os.stat(store.fs / "a/x").st_ino == os.stat(store.fs / "b/y").st_ino
    assert (store.fs / "b/y").read_bytes() == b"data"
    run(union.rename, store.ino("a"), b"x", store.ino("b"), b"z", 0)
    assert node.nlink == 2
    assert {union.path(node)} <= {b"b/y", b"b/z"}
    assert (store.fs / "a/.wh.x").exists()
    assert os.stat(store.fs / "b/z").st_ino == os.stat(store.fs / "b/y").st_ino


def test_writes_at_an_offset_past_the_end(tmp_path: Path) -> None:
    store = Store(tmp_path, _plain)
    union = store.union
    node, fd = run(union.open, store.ino("f"), os.O_RDWR)
    try:
        assert run(union.write, fd, node, 7, b"!") == 1
        assert run(union.write, fd, node, 0, b"") == 0
    finally:
        os.close(fd)
    assert (store.fs / "f").read_bytes() == b"lower\0\0!"
    assert node.size == 8


def test_removing_a_lower_directory_leaves_its_parent_up_and_refreshed(tmp_path: Path) -> None:
    def nested(lower: Path) -> None:
        (lower / "a/b/c").mkdir(parents=True)

    store = Store(tmp_path, nested)
    union = store.union
    b = store.node("a/b")
    run(union.rmdir, b.ino, b"c")
    assert (store.fs / "a/b/.wh.c").exists()
    assert union.is_upper(b)
    assert union.is_upper(store.node("a"))
    assert not union.is_opaque(b)
    assert b.mtime == os.lstat(store.fs / "a/b").st_mtime_ns
    assert store.names("a/b") == []
    _errno(errno.ENOENT, union.rmdir, b.ino, b"c")
