"""The union engine driven directly, without mounting: a lower layer directory, an empty
upper directory, and ``Union`` operations under ``trio.run``; what they leave is checked in
the merged tree and on disk (read back by ``scan_snapshot``, as a commit would)."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

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

    def __init__(self, tmp: Path, lower: Callable[[Path], None]) -> None:
        self.lower = tmp / "lower"
        self.fs = tmp / "upper" / "fs"
        self.work = tmp / "upper" / "work"
        for directory in (self.lower, self.fs, self.work):
            directory.mkdir(parents=True)
        lower(self.lower)
        self.recorded: dict[str, Entry] = {}
        tree = MergedTree.build(
            [
                Layer(self.lower, scan_snapshot(self.lower), "lower"),
                Layer(self.fs, scan_snapshot(self.fs), "upper", upper=True),
            ]
        )
        sink = Overrides(put=self._put, delete=lambda path, subtree: self._delete(path))
        self.union = Union(tree, Upper(self.fs, self.work, PRIVILEGED), sink)

    def _put(self, entry: Entry) -> None:
        self.recorded[entry.path] = entry

    def _delete(self, path: str) -> None:
        self.recorded.pop(path, None)

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
