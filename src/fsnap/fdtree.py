"""Walking directory trees through file descriptors, iteratively, at any depth.

A layer can hold a directory nested thousands of levels deep (one 754-byte tar does it).
``shutil.rmtree`` and any recursive walk then die with ``RecursionError`` (or run out of
file descriptors, one per level), leaving a half-removed tree that breaks every later
cleanup. The walks here keep an explicit stack of names instead of recursing, and hold one
directory fd at a time: they come back up through ``..`` (``climb``), checking that the
directory reached is the one they came from (device and inode), so a tree moved meanwhile
stops the walk instead of redirecting it. Nothing is ever followed: entries are looked at
with ``lstat`` semantics and directories opened with ``O_NOFOLLOW``.

Directories whose mode forbids their owner to list or change them (a layer may hold 0555
or 0000 directories; an unprivileged owner cannot bypass that as root does) are made
0700 first.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class _Level:
    """One directory on the way down: its name in its parent, identity, subdirs left."""

    name: str
    dev: int
    ino: int
    subdirs: list[str] = field(default_factory=list)


def remove_tree(path: Path) -> None:
    """Remove ``path`` whatever it is (a whole tree for a directory); gone already is fine."""
    try:
        parent = os.open(path.parent, _OPEN_DIR & ~os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    try:
        remove_entry_at(parent, path.name)
    finally:
        os.close(parent)


def remove_entry_at(parent_fd: int, name: str) -> None:
    """Remove ``name`` in directory ``parent_fd``: unlink a non-directory, delete a tree."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        remove_tree_at(parent_fd, name)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=parent_fd)


def remove_tree_at(parent_fd: int, name: str) -> None:
    """Delete directory ``name`` of ``parent_fd`` and everything beneath it.

    Iterative, depth-first, two fds at most; each directory is listed once."""
    fd = _open_dir(parent_fd, name)
    try:
        levels = [_enter(fd, name)]
        while levels:
            level = levels[-1]
            if level.subdirs:
                child_name = level.subdirs.pop()
                try:
                    child = _open_dir(fd, child_name)
                except FileNotFoundError:
                    continue
                os.close(fd)
                fd = child
                levels.append(_enter(fd, child_name))
                continue
            levels.pop()
            if not levels:
                break
            fd = climb(fd, levels[-1].dev, levels[-1].ino)
            os.rmdir(level.name, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)


def allocated(path: Path) -> tuple[int, int]:
    """Bytes allocated on disk (``st_blocks * 512``, as ``du``) and inodes under ``path``,
    itself included; a hard-linked inode counts once."""
    seen: set[tuple[int, int]] = set()
    size = 0
    for st in iter_stats(path):
        identity = (st.st_dev, st.st_ino)
        if identity not in seen:
            seen.add(identity)
            size += st.st_blocks * 512
    return size, len(seen)


def iter_stats(path: Path) -> Iterator[os.stat_result]:
    """``lstat`` of ``path`` and of everything beneath it (depth first, one fd held). An
    entry or a subdirectory removed while the walk runs is left out (a writer may be
    busy in the tree); ``path`` itself missing is FileNotFoundError."""
    top = os.lstat(path)
    yield top
    if not stat.S_ISDIR(top.st_mode):
        return
    fd = os.open(path, _OPEN_DIR)
    try:
        levels: list[_Level] = []
        level = _Level(path.name, top.st_dev, top.st_ino)
        while True:
            with os.scandir(fd) as entries:
                for entry in entries:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    yield st
                    if stat.S_ISDIR(st.st_mode):
                        level.subdirs.append(entry.name)
            levels.append(level)
            child = -1
            while child < 0:
                while levels and not levels[-1].subdirs:
                    levels.pop()
                    if levels:
                        fd = climb(fd, levels[-1].dev, levels[-1].ino)
                if not levels:
                    return
                name = levels[-1].subdirs.pop()
                with contextlib.suppress(FileNotFoundError):
                    child = os.open(name, _OPEN_DIR, dir_fd=fd)
            os.close(fd)
            fd = child
            st = os.fstat(fd)
            level = _Level(name, st.st_dev, st.st_ino)
    finally:
        os.close(fd)


def climb(fd: int, dev: int, ino: int) -> int:
    """The fd of ``fd``'s parent directory, which must be (``dev``, ``ino``): the one a
    walk came down from. On success ``fd`` is closed; on failure it stays open (the
    caller's to close). A mismatch (the tree moved while we walked it) is ESTALE."""
    up = os.open("..", _OPEN_DIR, dir_fd=fd)
    st = os.fstat(up)
    if (st.st_dev, st.st_ino) != (dev, ino):
        os.close(up)
        raise OSError(errno.ESTALE, "directory tree moved while it was walked")
    os.close(fd)
    return up


def _open_dir(parent_fd: int, name: str) -> int:
    try:
        return os.open(name, _OPEN_DIR, dir_fd=parent_fd)
    except PermissionError:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            raise
        os.chmod(name, stat.S_IRWXU, dir_fd=parent_fd)
        return os.open(name, _OPEN_DIR, dir_fd=parent_fd)


def _enter(fd: int, name: str) -> _Level:
    """List directory ``fd`` once: unlink what is not a directory, keep the subdirs."""
    st = os.fstat(fd)
    if st.st_mode & stat.S_IRWXU != stat.S_IRWXU:
        os.fchmod(fd, stat.S_IMODE(st.st_mode) | stat.S_IRWXU)
    level = _Level(name, st.st_dev, st.st_ino)
    with os.scandir(fd) as entries:
        listed = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
    for entry_name, is_dir in listed:
        if is_dir:
            level.subdirs.append(entry_name)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry_name, dir_fd=fd)
    return level
