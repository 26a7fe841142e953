"""The union engine driven directly, without mounting: a lower layer directory, an empty
upper directory, and ``Union`` operations under ``trio.run``; what they leave is checked in
the merged tree and on disk (read back by ``scan_snapshot``, as a commit would)."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
from conftest import filesystem_at

from fsnap.archive.entry import Entry
from fsnap.archive.format import NAME_MAX, OPAQUE_MARKER
from fsnap.diff.scan import scan_snapshot
from fsnap.mount.tree import Layer, MergedTree, Node
from fsnap.mount.union import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    AttrChange,
    NewObject,
    Overrides,
    Union,
)
from fsnap.mount.upper import Upper

PRIVILEGED = os.geteuid() == 0
CALLER = (1000, 1000)
DIR = NewObject("dir", stat.S_IFDIR | 0o755)
_T = TypeVar("_T")


class Store:
    """A lower layer and an upper directory under ``tmp``, and the engine over them."""

    def __init__(
        self, tmp: Path, lower: Callable[[Path], None], privileged: bool = PRIVILEGED
    ) -> None:
        self.lower = tmp / "lower"
        self.fs = tmp / "upper" / "fs"
        self.work = tmp / "upper" / "work"
        for directory in (self.lower, self.fs, self.work):
            directory.mkdir(parents=True)
        lower(self.lower)
        self.recorded: dict[str, Entry] = {}
        self.deleted: list[tuple[str, bool]] = []  # (path, subtree) of each delete
        tree = MergedTree.build(
            [
                Layer(self.lower, scan_snapshot(self.lower), "lower"),
                Layer(self.fs, scan_snapshot(self.fs), "upper", upper=True),
            ]
        )
        sink = Overrides(put=self._put, delete=self._delete)
        self.union = Union(tree, Upper(self.fs, self.work, privileged), sink)

    def _put(self, entry: Entry) -> None:
        self.recorded[entry.path] = entry

    def _delete(self, path: str, subtree: bool) -> None:
        """As the index does: the override of ``path``, and with ``subtree`` all below."""
        self.deleted.append((path, subtree))
        self.recorded.pop(path, None)
        if subtree:
            for below in [p for p in self.recorded if p.startswith(path + "/")]:
                del self.recorded[below]

    def node(self, path: str) -> Node:
        found = self.union.tree.lookup(path)
        assert found is not None, path
        return found

    def ino(self, path: str) -> int:
        return self.node(path).ino

    def names(self, path: str) -> list[bytes]:
        names = self.node(path).names
        assert names is not None
        return [name for name in names if name is not None]

    def upper(self) -> dict[str, Entry]:
        """The upper directory read back as a layer (what a commit would record)."""
        return {entry.path: entry for entry in scan_snapshot(self.fs)}


def run(func: Callable[..., Awaitable[_T]], *args: Any) -> _T:
    return trio.run(func, *args)


@pytest.fixture
def fds() -> Iterator[list[int]]:
    """Descriptors a test got from the engine, closed whatever happens."""
    opened: list[int] = []
    yield opened
    for fd in opened:
        os.close(fd)


def _errno(code: int, func: Callable[..., Awaitable[object]], *args: Any) -> None:
    with pytest.raises(OSError) as caught:
        run(func, *args)
    assert caught.value.errno == code


def _etc(lower: Path) -> None:
    (lower / "etc").mkdir(mode=0o750)
    (lower / "etc/passwd").write_bytes(b"root")
    (lower / "shared").mkdir()
    os.chmod(lower / "shared", 0o2775)
    if PRIVILEGED:
        os.chown(lower / "shared", 0, 50)


def test_create_copies_the_parent_up_and_applies_the_setgid_policy(
    tmp_path: Path, fds: list[int]
) -> None:
    store = Store(tmp_path, _etc)
    union = store.union
    node, fd = run(union.create_file, store.ino("etc"), b"new", 0o100640, CALLER)
    fds.append(fd)
    os.write(fd, b"hello")
    assert store.node("etc/new") is node
    assert union.is_upper(node)
    assert (node.uid, node.gid, node.mode) == (*CALLER, 0o100640)
    assert (store.fs / "etc/new").read_bytes() == b"hello"
    assert stat.S_IMODE(os.stat(store.fs / "etc").st_mode) == 0o750  # copied as it was below
    assert set(store.upper()) == {"etc", "etc/new"}

    sub = run(union.make, store.ino("shared"), b"sub", DIR, CALLER)
    file = run(union.make, store.ino("shared"), b"f", NewObject("file", 0o100644), CALLER)
    gid = store.node("shared").gid
    assert (sub.gid, file.gid) == (gid, gid)
    assert sub.mode & stat.S_ISGID
    assert not file.mode & stat.S_ISGID
    assert store.names("shared") == [b"sub", b"f"]


def test_bad_names_and_kinds_raise_the_errno(tmp_path: Path) -> None:
    store = Store(tmp_path, _etc)
    union, etc, root = store.union, store.ino("etc"), store.ino("")
    _errno(errno.EEXIST, union.make, etc, b"passwd", DIR, CALLER)
    _errno(errno.EINVAL, union.make, etc, b".wh.x", DIR, CALLER)
    _errno(errno.ENAMETOOLONG, union.make, etc, b"n" * (NAME_MAX + 1), DIR, CALLER)
    _errno(errno.ENOTEMPTY, union.rmdir, root, b"etc")
    _errno(errno.EISDIR, union.unlink, root, b"etc")
    _errno(errno.ENOTDIR, union.rmdir, etc, b"passwd")
    _errno(errno.ENOENT, union.unlink, etc, b"absent")
    _errno(errno.ENOTDIR, union.unlink, store.ino("etc/passwd"), b"x")
    _errno(errno.EINVAL, union.rename, root, b"etc", etc, b"inside", 0)
    _errno(errno.EINVAL, union.rename, root, b"etc", root, b"x", RENAME_NOREPLACE | 2)
    _errno(errno.EEXIST, union.rename, etc, b"passwd", root, b"shared", RENAME_NOREPLACE)
    with pytest.raises(FileNotFoundError):
        union.node(len(union.tree.nodes))
    assert store.upper() == {}  # nothing failed halfway into the upper directory


def _tool(lower: Path) -> None:
    (lower / "bin").mkdir()
    tool = lower / "bin/tool"
    tool.write_bytes(b"tool")
    os.chmod(tool, 0o4755)
    os.setxattr(tool, "user.note", b"kept")


def test_copy_up_keeps_content_mode_and_xattrs(tmp_path: Path, fds: list[int]) -> None:
    store = Store(tmp_path, _tool)
    union = store.union
    node, fd = run(union.open, store.ino("bin/tool"), os.O_WRONLY)
    fds.append(fd)
    assert run(union.write, fd, node, 0, b"T") == 1
    assert (store.fs / "bin/tool").read_bytes() == b"Tool"
    assert (store.lower / "bin/tool").read_bytes() == b"tool"
    assert node.size == 4
    assert node.source is None
    assert union.is_upper(node)
    copied = store.upper()["bin/tool"]
    if PRIVILEGED:
        assert copied.mode == 0o4755
        assert copied.xattrs == {"user.note": b"kept"}
    else:
        assert store.recorded["bin/tool"].xattrs == {"user.note": b"kept"}

    run(union.set_xattr, store.ino("bin"), b"user.dir", b"d")
    assert store.node("bin").xattrs == {b"user.dir": b"d"}
    run(union.remove_xattr, store.ino("bin/tool"), b"user.note")
    assert store.node("bin/tool").xattrs is None
    _errno(errno.ENODATA, union.remove_xattr, store.ino("bin/tool"), b"user.note")
    if PRIVILEGED:
        assert os.getxattr(store.fs / "bin", "user.dir") == b"d"
        assert "user.note" not in os.listxattr(store.fs / "bin/tool")


def test_truncating_setattr_copies_no_data(tmp_path: Path) -> None:
    store = Store(tmp_path, _tool)
    node = run(store.union.set_attrs, store.ino("bin/tool"), AttrChange(size=0, mode=0o700), None)
    assert (node.size, stat.S_IMODE(node.mode)) == (0, 0o700)
    assert (store.fs / "bin/tool").read_bytes() == b""


def _two_dirs(lower: Path) -> None:
    for name, data in (("a", b"A"), ("b", b"B")):
        (lower / name).mkdir()
        (lower / name / name).write_bytes(data)


def test_rename_over_a_whiteout_replaces_it(tmp_path: Path) -> None:
    store = Store(tmp_path, _two_dirs)
    union = store.union
    moved = store.node("a/a")
    run(union.unlink, store.ino("b"), b"b")
    assert (store.fs / "b/.wh.b").exists()
    assert store.names("b") == []
    run(union.rename, store.ino("a"), b"a", store.ino("b"), b"b", 0)
    assert store.node("b/b") is moved
    assert store.names("a") == []
    assert union.path(moved) == b"b/b"
    assert not (store.fs / "b/.wh.b").exists()
    assert (store.fs / "b/b").read_bytes() == b"A"
    upper = store.upper()
    assert upper["a/a"].kind == "whiteout"
    assert upper["b/b"].kind == "file"


def test_rename_exchange_swaps_without_whiteouts(tmp_path: Path) -> None:
    store = Store(tmp_path, _two_dirs)
    union = store.union
    first, second = store.node("a"), store.node("b")
    run(union.rename, store.ino(""), b"a", store.ino(""), b"b", RENAME_EXCHANGE)
    assert (store.node("a"), store.node("b")) == (second, first)
    upper = store.upper()
    assert (store.fs / "a/b").read_bytes() == b"B"
    assert (store.fs / "b/a").read_bytes() == b"A"
    assert upper["a"].opaque
    assert upper["b"].opaque
    assert not [path for path, entry in upper.items() if entry.kind == "whiteout"]


def _linked(lower: Path) -> None:
    (lower / "x").write_bytes(b"data")
    os.link(lower / "x", lower / "y")


def test_hard_links_copy_up_as_one_inode(tmp_path: Path, fds: list[int]) -> None:
    store = Store(tmp_path, _linked)
    union = store.union
    node = store.node("x")
    assert store.node("y") is node
    assert node.nlink == 2
    _, fd = run(union.open, node.ino, os.O_RDWR)
    fds.append(fd)
    assert os.stat(store.fs / "x").st_ino == os.stat(store.fs / "y").st_ino
    assert run(union.link, node.ino, store.ino(""), b"z") is node
    assert node.nlink == 3
    assert os.stat(store.fs / "z").st_nlink == 3
    _errno(errno.EPERM, union.link, store.ino(""), store.ino(""), b"d")
    run(union.unlink, store.ino(""), b"x")
    assert node.nlink == 2
    assert union.path(node) in (b"y", b"z")
    upper = store.upper()
    assert upper["x"].kind == "whiteout"  # the lower name needs hiding
    assert {upper["y"].kind, upper["z"].kind} == {"file", "hardlink"}


def _full_dir(lower: Path) -> None:
    (lower / "d").mkdir()
    (lower / "d/one").write_bytes(b"1")
    (lower / "e").mkdir()
    (lower / "e/f").write_bytes(b"f")


def test_a_directory_removed_then_made_again_is_opaque(tmp_path: Path) -> None:
    store = Store(tmp_path, _full_dir)
    union = store.union
    root = store.ino("")
    run(union.unlink, store.ino("d"), b"one")
    run(union.rmdir, root, b"d")
    assert (store.fs / ".wh.d").exists()
    again = run(union.make, root, b"d", DIR, CALLER)
    assert union.is_opaque(again)
    assert store.names("d") == []
    assert (store.fs / "d" / OPAQUE_MARKER).exists()
    assert not (store.fs / ".wh.d").exists()
    fresh = run(union.make, root, b"new", DIR, CALLER)
    assert not union.is_opaque(fresh)  # nothing below to hide

    run(union.rename, root, b"e", root, b"e2", 0)
    upper = store.upper()
    assert upper["d"].opaque
    assert not upper["new"].opaque
    assert upper["e"].kind == "whiteout"
    assert upper["e2"].opaque
    assert (store.fs / "e2/f").read_bytes() == b"f"


# --- rules a mutant of union.py broke unnoticed (issue 18) ------------------------------

ME = (os.geteuid(), os.getegid())


def _plain(lower: Path) -> None:
    (lower / "d").mkdir()
    (lower / "d/f").write_bytes(b"hello")
    (lower / "f").write_bytes(b"lower")
    os.mkfifo(lower / "p")


def test_unprivileged_overrides_hold_only_what_disk_cannot(tmp_path: Path) -> None:
    store = Store(tmp_path, _plain, privileged=False)
    union, root = store.union, store.ino("")
    run(union.make, root, b"mine", NewObject("file", 0o100644), ME)
    run(union.make, root, b"dir", DIR, ME)
    run(union.make, root, b"link", NewObject("symlink", 0o777, link=b"mine"), ME)
    assert set(store.recorded) == {""}  # the root came up: its entry always
    assert ("mine", False) in store.deleted
    run(union.make, root, b"theirs", NewObject("file", 0o100644), CALLER)
    run(union.make, root, b"ro", NewObject("file", 0o100400), ME)
    dev = NewObject("char", stat.S_IFCHR | 0o600, rdev=os.makedev(1, 3))
    run(union.make, root, b"null", dev, ME)
    theirs, ro, null = store.recorded["theirs"], store.recorded["ro"], store.recorded["null"]
    assert (theirs.uid, theirs.gid, theirs.mode) == (*CALLER, 0o644)
    assert os.stat(store.fs / "theirs").st_uid == ME[0]
    assert ro.mode == 0o400
    assert stat.S_IMODE(os.stat(store.fs / "ro").st_mode) == 0o600
    assert (null.kind, null.devmajor, null.devminor, null.size) == ("char", 1, 3, 0)
    assert stat.S_ISREG(os.lstat(store.fs / "null").st_mode)
    assert store.node("null").rdev == os.makedev(1, 3)
    # changes that disk can hold drop the override, others make one
    run(union.set_attrs, store.ino("ro"), AttrChange(mode=0o640), None)
    assert "ro" not in store.recorded
    run(union.set_attrs, store.ino("f"), AttrChange(uid=7), None)
    assert store.recorded["f"].uid == 7
    assert store.recorded["f"].size == 5
    run(union.set_attrs, store.ino("f"), AttrChange(uid=ME[0]), None)
    assert "f" not in store.recorded
    run(union.set_xattr, store.ino("mine"), b"user.x", b"1")
    assert store.recorded["mine"].xattrs == {"user.x": b"1"}
    assert os.listxattr(store.fs / "mine") == []
    run(union.remove_xattr, store.ino("mine"), b"user.x")
    assert "mine" not in store.recorded


def test_unprivileged_removal_and_rename_move_the_overrides(tmp_path: Path) -> None:
    store = Store(tmp_path, _plain, privileged=False)
    union, root = store.union, store.ino("")
    top = run(union.make, root, b"top", DIR, CALLER)
    run(union.make, top.ino, b"x", NewObject("file", 0o100644), CALLER)
    assert set(store.recorded) >= {"top", "top/x"}
    run(union.rename, root, b"top", root, b"moved", 0)
    assert ("top", True) in store.deleted
    assert "top/x" not in store.recorded
    assert "top" not in store.recorded
    assert store.recorded["moved/x"].uid == CALLER[0]
    assert store.recorded["moved"].uid == CALLER[0]
    other = run(union.make, root, b"other", DIR, CALLER)
    run(union.unlink, store.ino("moved"), b"x")
    assert ("moved/x", False) in store.deleted
    assert "moved/x" not in store.recorded
    run(union.rmdir, root, b"moved")
    assert ("moved", True) in store.deleted
    # a name only the lower layers hold is no override's: nothing to delete
    store.deleted.clear()
    run(union.unlink, store.ino("d"), b"f")
    assert store.deleted == [("d", False)]  # its directory came up, with no override
    # a rename over an upper directory drops the target's overrides
    run(union.make, root, b"t", DIR, CALLER)
    run(union.rename, root, b"other", root, b"t", 0)
    assert ("other", True) in store.deleted
    assert ("t", True) in store.deleted
    assert store.recorded["t"].uid == CALLER[0]
    assert store.node("t") is other
    # an exchange drops both names' overrides, then records both objects again
    run(union.make, root, b"u", NewObject("file", 0o100644), CALLER)
    store.deleted.clear()
    run(union.rename, root, b"t", root, b"u", RENAME_EXCHANGE)
    assert set(store.deleted) >= {("t", True), ("u", False)}
    assert store.recorded["t"].kind == "file"
    assert store.recorded["u"].kind == "dir"


def test_a_root_change_is_recorded_in_both_modes(tmp_path: Path) -> None:
    for privileged in (False, PRIVILEGED):
        store = Store(tmp_path / str(privileged), _plain, privileged=privileged)
        run(store.union.set_attrs, store.ino(""), AttrChange(mode=0o700), None)
        assert store.recorded[""].mode == 0o700
        run(store.union.set_xattr, store.ino(""), b"user.r", b"1")
        assert store.recorded[""].xattrs == {"user.r": b"1"}


def test_privileged_changes_go_to_disk_without_overrides(tmp_path: Path) -> None:
    if not PRIVILEGED:
        pytest.skip("a privileged daemon runs as root")
    store = Store(tmp_path, _plain, privileged=True)
    union = store.union
    node = run(union.make, store.ino("d"), b"n", NewObject("file", 0o100400), CALLER)
    assert (os.stat(store.fs / "d/n").st_uid, node.uid) == (CALLER[0], CALLER[0])
    run(union.set_attrs, store.ino("f"), AttrChange(uid=7, mode=0o4711), None)
    st = os.stat(store.fs / "f")
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (7, 0o4711)
    assert set(store.recorded) == {""}
    assert store.deleted == []


def test_listing_slots_stay_valid_through_removals(tmp_path: Path) -> None:
    def three(lower: Path) -> None:
        for name in ("a", "b", "c"):
            (lower / name).write_bytes(b"")

    store = Store(tmp_path, three)
    union, root = store.union, store.ino("")
    run(union.unlink, root, b"a")
    run(union.make, root, b"d", NewObject("file", 0o100644), CALLER)
    names = store.node("").names
    assert names == [None, b"b", b"c", b"d"]
    run(union.unlink, root, b"d")
    assert names == [None, b"b", b"c", None]
    run(union.unlink, root, b"c")
    assert names == [None, b"b", None, None]
    run(union.rename, root, b"b", root, b"e", 0)
    assert names == [None, None, None, None, b"e"]


def test_hard_link_names_follow_removals(tmp_path: Path, fds: list[int]) -> None:
    store = Store(tmp_path, _linked)
    union, root = store.union, store.ino("")
    node = store.node("x")
    run(union.unlink, root, b"x")
    assert (node.nlink, union.path(node)) == (1, b"y")
    assert node.parent is store.node("")
    assert node.name == b"y"
    _, fd = run(union.open, node.ino, os.O_RDWR)
    fds.append(fd)
    assert (store.fs / "y").read_bytes() == b"data"
    assert not (store.fs / "x").exists()
    assert (store.fs / ".wh.x").exists()
    run(union.link, node.ino, root, b"z")
    run(union.unlink, root, b"y")
    assert (node.nlink, union.path(node)) == (1, b"z")
    run(union.unlink, root, b"z")
    assert node.nlink == 0
    # no name left: reached through the descriptor only
    _errno(errno.ESTALE, union.set_attrs, node.ino, AttrChange(size=1), None)
    run(union.set_attrs, node.ino, AttrChange(size=2, mode=0o600), fd)
    assert (node.size, stat.S_IMODE(node.mode)) == (2, 0o600)
    assert os.fstat(fd).st_size == 2
    _errno(errno.EROFS, union.open, node.ino, os.O_WRONLY)
    _errno(errno.EROFS, union.open, node.ino, os.O_RDWR)


def test_new_names_are_checked_for_link_and_rename(tmp_path: Path) -> None:
    store = Store(tmp_path, _plain)
    union, root, f = store.union, store.ino(""), store.ino("f")
    long = b"n" * (NAME_MAX + 1)
    _errno(errno.ENAMETOOLONG, union.link, f, root, long)
    _errno(errno.EINVAL, union.link, f, root, b".wh.f")
    _errno(errno.ENAMETOOLONG, union.rename, root, b"f", root, long, 0)
    _errno(errno.EINVAL, union.rename, root, b"f", root, b".wh.g", 0)
    _errno(errno.ENAMETOOLONG, union.unlink, root, long)
    _errno(errno.ENOENT, union.unlink, root, b"n" * NAME_MAX)
    run(union.link, f, root, b"n" * NAME_MAX)
    assert store.node("n" * NAME_MAX) is store.node("f")
    assert store.upper().keys() >= {"f", "n" * NAME_MAX}


def test_rename_checks(tmp_path: Path) -> None:
    store = Store(tmp_path, _plain)
    union, root = store.union, store.ino("")
    _errno(errno.ENOTDIR, union.rename, root, b"d", root, b"f", 0)
    _errno(errno.EISDIR, union.rename, root, b"f", root, b"d", 0)
    run(union.make, root, b"e", DIR, CALLER)
    _errno(errno.ENOTEMPTY, union.rename, root, b"e", root, b"d", 0)
    _errno(errno.ENOENT, union.rename, root, b"f", root, b"absent", RENAME_EXCHANGE)
    _errno(errno.EINVAL, union.rename, root, b"d", store.ino("d"), b"f", RENAME_EXCHANGE)
    _errno(errno.EINVAL, union.rename, root, b"d", root, b"x", 4)
    run(union.link, store.ino("f"), root, b"g")
    before = store.upper()
    run(union.rename, root, b"f", root, b"g", 0)  # two names of one file: nothing happens
    run(union.rename, root, b"d", root, b"d", RENAME_EXCHANGE)
    assert store.upper() == before
    assert store.names("") == [b"d", b"f", b"p", b"e", b"g"]
    # a file moves into a directory, then replaces a file (unless told not to)
    moved = store.node("f")
    run(union.rename, root, b"f", store.ino("e"), b"f", 0)
    _errno(errno.EEXIST, union.rename, store.ino("e"), b"f", store.ino("d"), b"f", 1)
    run(union.rename, store.ino("e"), b"f", store.ino("d"), b"f", 0)
    assert store.node("d/f") is moved
    assert store.names("e") == []
    assert (store.fs / "d/f").read_bytes() == b"lower"
    assert store.node("g") is moved
    assert moved.nlink == 2


def test_rename_of_a_file_over_a_lower_file(tmp_path: Path) -> None:
    store = Store(tmp_path, _plain)
    union, root = store.union, store.ino("")
    moved = store.node("f")
    run(union.rename, root, b"f", store.ino("d"), b"f", 0)
    assert store.node("d/f") is moved
    assert (store.fs / "d/f").read_bytes() == b"lower"
    assert (store.fs / ".wh.f").exists()
    assert store.names("d") == [b"f"]
    assert store.node("d").nlink == 2
    assert store.node("").nlink == 3


def test_a_removed_name_leaves_a_whiteout_only_if_the_lower_layers_have_it(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path, _plain)
    union, root = store.union, store.ino("")
    new = run(union.make, root, b"new", DIR, CALLER)
    run(union.make, new.ino, b"x", NewObject("file", 0o100644), CALLER)
    run(union.unlink, new.ino, b"x")
    assert os.listdir(store.fs / "new") == []
    run(union.unlink, root, b"f")
    again = run(union.make, root, b"f", DIR, CALLER)
    assert not union.is_opaque(again)  # a file was below, not a directory
    assert not (store.fs / ".wh.f").exists()
    # inside an opaque directory nothing below shows: no whiteouts
    run(union.unlink, store.ino("d"), b"f")
    run(union.rmdir, root, b"d")
    d = run(union.make, root, b"d", DIR, CALLER)
    assert union.is_opaque(d)
    run(union.make, d.ino, b"f", NewObject("file", 0o100644), CALLER)
    run(union.unlink, d.ino, b"f")
    assert os.listdir(store.fs / "d") == [OPAQUE_MARKER]
    # and below a renamed (materialized) directory either
    run(union.make, root, b"g", DIR, CALLER)
    run(union.rename, root, b"g", d.ino, b"g2", 0)
    sub = run(union.make, store.ino("d/g2"), b"s", DIR, CALLER)
    assert not union.is_opaque(sub)


def test_renamed_directory_is_materialized_opaque(tmp_path: Path) -> None:
    def deep(lower: Path) -> None:
        (lower / "a/b").mkdir(parents=True)
        (lower / "a/b/c").write_bytes(b"c")
        (lower / "a/l").symlink_to("b")

    store = Store(tmp_path, deep)
    union, root = store.union, store.ino("")
    run(union.rename, root, b"a", root, b"z", 0)
    assert union.is_opaque(store.node("z"))
    assert union.is_opaque(store.node("z/b"))
    assert (store.fs / "z" / OPAQUE_MARKER).exists()
    assert (store.fs / "z/b" / OPAQUE_MARKER).exists()
    assert (store.fs / "z/b/c").read_bytes() == b"c"
    assert os.readlink(store.fs / "z/l") == "b"
    assert union.path(store.node("z/b/c")) == b"z/b/c"
    upper = store.upper()
    assert upper["a"].kind == "whiteout"
    assert upper["z/b/c"].kind == "file"


def test_open_read_write_and_truncate(tmp_path: Path, fds: list[int]) -> None:
    store = Store(tmp_path, _plain)
    union = store.union
    f = store.node("f")
    node, fd = run(union.open, f.ino, os.O_RDONLY)
    fds.append(fd)
    assert not union.is_upper(node)
    assert os.pread(fd, 10, 0) == b"lower"
    _errno(errno.EINVAL, union.open, store.ino("p"), os.O_RDONLY)
    node, fd = run(union.open, f.ino, os.O_RDONLY | os.O_TRUNC)
    fds.append(fd)
    assert union.is_upper(node)
    assert node.size == 0
    assert (store.fs / "f").read_bytes() == b""
    assert (store.lower / "f").read_bytes() == b"lower"
    node, fd = run(union.open, store.ino("d/f"), os.O_WRONLY | os.O_APPEND)
    fds.append(fd)
    assert run(union.write, fd, node, 5, b"!!") == 2
    assert (node.size, node.mtime) == (7, os.stat(store.fs / "d/f").st_mtime_ns)
    assert run(union.write, fd, None, 7, b"?") == 1
    assert (store.fs / "d/f").read_bytes() == b"hello!!?"
    node, fd = run(union.open, store.ino("d/f"), os.O_RDONLY)
    fds.append(fd)
    assert os.pread(fd, 20, 0) == b"hello!!?"
    with pytest.raises(OSError):
        os.write(fd, b"x")  # read-only: no write access handed out
    node, fd = run(union.create_file, store.ino(""), b"c", 0o100600, CALLER)
    fds.append(fd)
    os.write(fd, b"rw")
    assert os.pread(fd, 2, 0) == b"rw"
    assert node.layer == 1
    assert node.nlink == 1
    assert node.mode == stat.S_IFREG | 0o600


def test_set_attrs_size_times_and_modes(tmp_path: Path) -> None:
    store = Store(tmp_path, _plain)
    union = store.union
    node = run(union.set_attrs, store.ino("d/f"), AttrChange(size=2), None)
    assert node.size == 2
    assert (store.fs / "d/f").read_bytes() == b"he"
    st = os.lstat(store.fs / "d/f")
    run(union.set_attrs, node.ino, AttrChange(atime=5), None)
    after = os.lstat(store.fs / "d/f")
    assert (after.st_atime_ns, after.st_mtime_ns) == (5, st.st_mtime_ns)
    run(union.set_attrs, node.ino, AttrChange(mtime=6), None)
    assert (os.lstat(store.fs / "d/f").st_atime_ns, node.mtime, node.atime) == (5, 6, 5)
    run(union.set_attrs, node.ino, AttrChange(mode=0o170751), None)
    assert node.mode == stat.S_IFREG | 0o751
    assert stat.S_IMODE(os.lstat(store.fs / "d/f").st_mode) == 0o751
    assert os.lstat(store.fs / "d/f").st_mtime_ns == 6  # a chmod keeps the times
    d = run(union.set_attrs, store.ino("d"), AttrChange(gid=9), None)
    assert d.gid == 9
    assert d.mode == stat.S_IFDIR | 0o755
    p = run(union.set_attrs, store.ino("p"), AttrChange(mode=0o600), None)
    assert stat.S_ISFIFO(os.lstat(store.fs / "p").st_mode)
    assert p.size == 0


def test_xattrs_on_disk_and_in_the_tree(tmp_path: Path) -> None:
    store = Store(tmp_path, _plain)
    union = store.union
    run(union.set_xattr, store.ino("f"), b"user.a", b"1")
    run(union.set_xattr, store.ino("f"), b"user.b", b"2")
    run(union.remove_xattr, store.ino("f"), b"user.a")
    assert store.node("f").xattrs == {b"user.b": b"2"}
    _errno(errno.ENODATA, union.remove_xattr, store.ino("d/f"), b"user.a")
    assert not union.is_upper(store.node("d/f"))  # nothing to remove: no copy-up
    if PRIVILEGED:
        assert os.listxattr(store.fs / "f") == ["user.b"]


def test_parent_times_and_link_counts_follow_changes(tmp_path: Path) -> None:
    store = Store(tmp_path, _plain)
    union, root = store.union, store.ino("")
    d = store.node("d")
    run(union.make, d.ino, b"sub", DIR, CALLER)
    assert d.nlink == 3
    assert d.mtime == os.lstat(store.fs / "d").st_mtime_ns
    run(union.rmdir, d.ino, b"sub")
    assert d.nlink == 2
    assert d.mtime == os.lstat(store.fs / "d").st_mtime_ns
    run(union.set_attrs, root, AttrChange(mtime=77), None)
    assert store.node("").mtime == 77 == os.lstat(store.fs).st_mtime_ns


def test_fsync_dir_and_statvfs(tmp_path: Path) -> None:
    store = Store(tmp_path, _plain)
    union = store.union
    run(union.fsync_dir, store.ino(""))
    run(union.fsync_dir, store.ino("d"))  # only below: nothing on disk to sync
    assert not (store.fs / "d").exists()
    numbers = run(union.statvfs)
    assert numbers.f_blocks == os.statvfs(store.fs).f_blocks
    _errno(errno.ENOENT, union.fsync_dir, 0)


def test_a_lower_file_removed_while_open_is_never_copied_up_again(
    tmp_path: Path, fds: list[int]
) -> None:
    store = Store(tmp_path, _plain)
    union, root = store.union, store.ino("")
    node, fd = run(union.open, store.ino("f"), os.O_RDONLY)
    fds.append(fd)
    run(union.unlink, root, b"f")
    assert node.nlink == 0
    _errno(errno.ENOENT, union.set_attrs, node.ino, AttrChange(mode=0o600), None)
    _errno(errno.ENOENT, union.set_xattr, node.ino, b"user.a", b"1")
    assert os.listdir(store.fs) == [".wh.f"]
    assert os.pread(fd, 10, 0) == b"lower"


@pytest.mark.needs_root
def test_writes_where_the_page_cache_write_is_refused(tmp_path: Path) -> None:
    """On tmpfs ``RWF_NOWAIT`` writes are refused: every byte goes through the thread."""
    with filesystem_at("tmpfs", tmp_path) as base:
        store = Store(base, _plain)
        node, fd = run(store.union.open, store.ino("d/f"), os.O_RDWR)
        try:
            assert run(store.union.write, fd, node, 2, b"LLO, world") == 10
            assert node.size == 12
        finally:
            os.close(fd)
        assert (store.fs / "d/f").read_bytes() == b"heLLO, world"


def test_the_writable_file_system_loads_no_http_stack() -> None:
    """A writable mount of a full (not lazy) image starts without httpx: the lazy layers'
    fetcher is imported only for a chain that has lazy layers."""
    code = (
        "import sys, fsnap.mount.rwfs, fsnap.mount.union; "
        "print('httpx' in sys.modules, 'fsnap.lazy.fetch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
