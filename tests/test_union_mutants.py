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
from test_union import CALLER, DIR, ME, PRIVILEGED, Store, _errno, _linked, _plain, run

from fsnap.archive.format import OPAQUE_MARKER
from fsnap.diff.scan import scan_snapshot
from fsnap.mount.tree import Layer, MergedTree, Node
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


def test_a_short_page_cache_write_is_completed_after_its_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where ``RWF_NOWAIT`` writes work (XFS, btrfs) one may stop short, at a page the
    kernel would have to read first: the rest goes to the thread at ``off + written``.
    ext4 and tmpfs here refuse such writes outright, so the kernel's short write is
    injected: the first 3 bytes really written with ``pwrite``, the count returned."""

    def short(fd: int, buf: bytes, off: int) -> int:
        return os.pwrite(fd, buf[:3], off)

    monkeypatch.setattr("fsnap.mount.union.write_nowait", short)
    store = Store(tmp_path, _plain)
    union = store.union
    node, fd = run(union.open, store.ino("f"), os.O_RDWR)
    try:
        assert run(union.write, fd, node, 4, b"ABCDEFG") == 7
    finally:
        os.close(fd)
    assert (store.fs / "f").read_bytes() == b"loweABCDEFG"
    assert node.size == 11


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


def test_records_are_slotted() -> None:
    """Records made per request stay small: no per-instance dict."""
    assert not hasattr(NewObject("file", 0o644), "__dict__")
    assert not hasattr(AttrChange(), "__dict__")
    assert "__dict__" not in dir(_Move)


def test_a_new_file_has_no_device_number(tmp_path: Path) -> None:
    store = Store(tmp_path, _plain)
    union, root = store.union, store.ino("")
    made = run(union.make, root, b"m", FILE, CALLER)
    created, fd = run(union.create_file, root, b"c", 0o100644, CALLER)
    os.close(fd)
    assert (made.rdev, created.rdev) == (0, 0)
    assert NewObject("file", 0o644).rdev == 0


def _deep(lower: Path) -> None:
    (lower / "a/b").mkdir(parents=True)
    (lower / "a/b/c").write_bytes(b"c")
    (lower / "a/x").write_bytes(b"x")
    (lower / "a/y").mkdir()


def test_removals_inside_a_renamed_directory_leave_no_whiteouts(tmp_path: Path) -> None:
    """A renamed directory is copied up opaque with all it holds: nothing below shows
    through it any more, so removing a name there leaves no whiteout, and a directory
    made again where a lower one was is not opaque."""
    store = Store(tmp_path, _deep)
    union, root = store.union, store.ino("")
    run(union.rename, root, b"a", root, b"z", 0)
    z, b = store.node("z"), store.node("z/b")
    run(union.unlink, z.ino, b"x")
    run(union.unlink, b.ino, b"c")
    run(union.rmdir, z.ino, b"y")
    assert sorted(os.listdir(store.fs / "z")) == sorted([OPAQUE_MARKER, "b"])
    assert os.listdir(store.fs / "z/b") == [OPAQUE_MARKER]
    again = run(union.make, z.ino, b"y", DIR, CALLER)
    assert not union.is_opaque(again)
    assert os.listdir(store.fs / "z/y") == []


def test_three_names_one_removed_then_copied_up_through_another(tmp_path: Path) -> None:
    def three(lower: Path) -> None:
        (lower / "x").write_bytes(b"data")
        os.link(lower / "x", lower / "y")
        os.link(lower / "x", lower / "z")

    store = Store(tmp_path, three)
    union, root = store.union, store.ino("")
    node = store.node("x")
    run(union.unlink, root, b"x")
    assert node.nlink == 2
    run(union.set_attrs, store.ino("z"), AttrChange(mode=0o600), None)
    assert os.stat(store.fs / "y").st_ino == os.stat(store.fs / "z").st_ino
    assert os.stat(store.fs / "y").st_nlink == 2
    assert not (store.fs / "x").exists()
    assert store.node("y") is store.node("z") is node


def test_a_copy_up_keeps_the_size_without_a_refresh(tmp_path: Path) -> None:
    """Copy-ups that write no data (open for writing, link, xattr, rename) leave the
    size as it was below."""

    def four(lower: Path) -> None:
        for name in ("o", "l", "x", "r"):
            (lower / name).write_bytes(b"12345")

    store = Store(tmp_path, four)
    union, root = store.union, store.ino("")
    node, fd = run(union.open, store.ino("o"), os.O_WRONLY)
    os.close(fd)
    assert (union.is_upper(node), node.size) == (True, 5)
    run(union.link, store.ino("l"), root, b"l2")
    run(union.set_xattr, store.ino("x"), b"user.a", b"1")
    run(union.rename, root, b"r", root, b"r2", 0)
    for name in ("l", "x", "r2"):
        assert union.is_upper(store.node(name))
        assert store.node(name).size == 5, name


def test_an_owner_given_back_drops_only_that_override(tmp_path: Path) -> None:
    store = Store(tmp_path, _plain, privileged=False)
    union, root = store.union, store.ino("")
    top = run(union.make, root, b"top", DIR, CALLER)
    run(union.make, top.ino, b"x", FILE, CALLER)
    assert {"top", "top/x"} <= set(store.recorded)
    run(union.set_attrs, top.ino, AttrChange(uid=ME[0], gid=ME[1]), None)
    assert "top" not in store.recorded
    assert store.recorded["top/x"].uid == CALLER[0]


def test_a_file_made_where_a_lower_directory_was_is_a_plain_file(tmp_path: Path) -> None:
    store = Store(tmp_path, _plain)
    union, root = store.union, store.ino("")
    run(union.unlink, store.ino("d"), b"f")
    run(union.rmdir, root, b"d")
    node = run(union.make, root, b"d", FILE, CALLER)
    assert not union.is_opaque(node)
    assert (store.fs / "d").is_file()
    assert store.upper()["d"].kind == "file"


def test_a_rename_over_an_upper_file_replaces_it(tmp_path: Path) -> None:
    store = Store(tmp_path, _plain)
    union, root = store.union, store.ino("")
    run(union.make, root, b"new", FILE, CALLER)
    moved = store.node("f")
    run(union.rename, root, b"f", root, b"new", 0)
    assert store.node("new") is moved
    assert (store.fs / "new").read_bytes() == b"lower"
    assert (store.fs / ".wh.f").exists()


def test_truncating_to_one_byte_keeps_the_first(tmp_path: Path) -> None:
    store = Store(tmp_path, _plain)
    node = run(store.union.set_attrs, store.ino("f"), AttrChange(size=1), None)
    assert node.size == 1
    assert (store.fs / "f").read_bytes() == b"l"


def _times_behind_disk(store: Store) -> Node:
    """``f`` copied up with atime 5 and mtime 6, then written through a descriptor with
    no node (as a write that updated none): disk's mtime is newer than the node's."""
    node = run(store.union.set_attrs, store.ino("f"), AttrChange(atime=5, mtime=6), None)
    _, fd = run(store.union.open, node.ino, os.O_WRONLY)
    try:
        assert run(store.union.write, fd, None, 0, b"L") == 1
    finally:
        os.close(fd)
    return node


def test_a_chmod_leaves_the_times_written_since(tmp_path: Path) -> None:
    """The tree's times may lag behind disk (a write that updated no node): a chmod or
    chown changes no time on disk."""
    store = Store(tmp_path, _plain)
    union = store.union
    node = _times_behind_disk(store)
    written = os.lstat(store.fs / "f").st_mtime_ns
    assert written != 6
    run(union.set_attrs, node.ino, AttrChange(mode=0o600), None)
    assert os.lstat(store.fs / "f").st_mtime_ns == written
    assert node.mtime == written


def test_a_nameless_open_file_takes_every_permission_bit(tmp_path: Path) -> None:
    store = Store(tmp_path, _plain)
    union, root = store.union, store.ino("")
    node, fd = run(union.create_file, root, b"c", 0o100600, CALLER)
    try:
        run(union.unlink, root, b"c")
        run(union.set_attrs, node.ino, AttrChange(mode=0o4755), fd)
        assert node.mode == stat.S_IFREG | 0o4755
    finally:
        os.close(fd)


def test_an_open_without_truncation_changes_no_time(tmp_path: Path) -> None:
    """``open(2)`` changes times only when it truncates: opening an upper file again, to
    read or to write, leaves the node's times as they were, also where they lag behind
    disk (a write that updated no node, as above)."""
    store = Store(tmp_path, _plain)
    union = store.union
    node = _times_behind_disk(store)
    assert os.lstat(store.fs / "f").st_mtime_ns != 6
    for flags in (os.O_RDONLY, os.O_WRONLY, os.O_RDWR | os.O_APPEND):
        _, fd = run(union.open, node.ino, flags)
        os.close(fd)
        assert (node.atime, node.mtime) == (5, 6), flags
    _, fd = run(union.open, node.ino, os.O_WRONLY | os.O_TRUNC)
    os.close(fd)
    assert node.mtime == os.lstat(store.fs / "f").st_mtime_ns != 6


def test_a_nameless_file_never_opens_for_writing(tmp_path: Path) -> None:
    """A file removed while open, reopened through ``/proc/PID/fd`` (the engine gets the
    inode, with no name to copy up to): opening it to write never reaches a lower layer's
    file. A lower file has nothing to copy up to (ENOENT, as the copy-up finds no name);
    an upper file unlinked meanwhile is refused (EROFS). Reading still serves the lower
    content."""
    store = Store(tmp_path, _plain)
    union, root = store.union, store.ino("")
    lower = store.node("f")
    node, fd = run(union.open, lower.ino, os.O_RDONLY)
    os.close(fd)
    run(union.unlink, root, b"f")
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_APPEND):
        _errno(errno.ENOENT, union.open, node.ino, flags)
    _, fd = run(union.open, node.ino, os.O_RDONLY)
    try:
        assert os.pread(fd, 10, 0) == b"lower"
    finally:
        os.close(fd)
    assert (store.lower / "f").read_bytes() == b"lower"
    upper, fd = run(union.create_file, root, b"c", 0o100644, CALLER)
    os.close(fd)
    run(union.unlink, root, b"c")
    for flags in (os.O_WRONLY, os.O_RDWR):
        _errno(errno.EROFS, union.open, upper.ino, flags)
