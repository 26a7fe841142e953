"""Contained file operations on a run's mounted root file system.

The image is not trusted: its /etc/passwd may be a symlink to the host's, its /etc a link to
``/``. Every path here is resolved by ``fsnap.archive.resolve.RootDir`` inside the root, one
component at a time from directory descriptors, never handed to the kernel as a string. The
mount is served by another process (the mount daemon), so this process may touch it.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

from fsnap.archive.resolve import RootDir, clean_name, join
from fsnap.errors import InvalidArgument, NotFound

_MAX_LINKS = 40  # the kernel's limit for one lookup
_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


@contextlib.contextmanager
def _opened(root: Path, created: list[str] | None = None) -> Iterator[RootDir]:
    rootdir = RootDir(root, on_implicit=None if created is None else created.append)
    try:
        yield rootdir
    finally:
        rootdir.close()


def _locate(rootdir: RootDir, path: str) -> tuple[str, str, os.stat_result | None] | None:
    """(canonical parent, name, stat or None if missing) of ``path``, following symlinks in
    every component (the last one too); None when a parent is missing or not a directory."""
    comps = clean_name(path)
    for _ in range(_MAX_LINKS):
        if not comps:
            return "", "", os.stat(rootdir.root_fd)
        try:
            parent = rootdir.resolve_dir(comps[:-1], create=False)
        except NotFound:
            return None
        name = comps[-1]
        try:
            st = os.stat(name, dir_fd=rootdir.dir_fd(parent), follow_symlinks=False)
        except FileNotFoundError:
            return parent, name, None
        if not stat.S_ISLNK(st.st_mode):
            return parent, name, st
        target = os.readlink(name, dir_fd=rootdir.dir_fd(parent))
        comps = clean_name(target if target.startswith("/") else join(parent, target))
    raise InvalidArgument(f"{path}: too many levels of symbolic links in the image")


def lookup(root: Path, path: str) -> os.stat_result | None:
    """What ``path`` is in the image (symlinks followed inside it), None if nothing."""
    with _opened(root) as rootdir:
        found = _locate(rootdir, path)
        return None if found is None else found[2]


def read_file(root: Path, path: str, limit: int) -> bytes:
    """The first ``limit`` bytes of regular file ``path`` in the image; b"" if it is missing
    or not a regular file."""
    with _opened(root) as rootdir:
        found = _locate(rootdir, path)
        if found is None or found[2] is None or not stat.S_ISREG(found[2].st_mode):
            return b""
        fd = os.open(found[1], _OPEN_FILE, dir_fd=rootdir.dir_fd(found[0]))
        try:
            return os.read(fd, limit)
        finally:
            os.close(fd)


def find_executable(root: Path, name: str, cwd: str, path_env: str) -> str | None:
    """The path by which the container would exec ``name`` (as Go's ``exec.LookPath`` that
    runc uses: a name with a slash is a path from ``cwd``, others are searched in
    ``path_env``), or None."""
    if "/" in name:
        candidates = [name if name.startswith("/") else join(cwd, name)]
    else:
        candidates = [join(d or ".", name) for d in path_env.split(":")]
        candidates = [c if c.startswith("/") else join(cwd, c) for c in candidates]
    for candidate in candidates:
        st = lookup(root, candidate)
        if st is not None and stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
            return candidate
    return None


def ensure(root: Path, path: str, directory: bool) -> list[str]:
    """Make ``path`` exist (a directory, or an empty file) with its missing parents; return
    what was created, parents first, as canonical paths. An existing non-directory in the way
    is an error, never replaced; so is a directory where a file is wanted (a file's bind
    mount target: mount(2) binds a file only on a file)."""
    created: list[str] = []
    with _opened(root, created) as rootdir:
        comps = clean_name(path)
        for _ in range(_MAX_LINKS):
            if not comps:
                return created
            _refuse_file_in_way(rootdir, comps[:-1], path)
            parent = rootdir.resolve_dir(comps[:-1], create=True)
            parent_fd, name = rootdir.dir_fd(parent), comps[-1]
            try:
                st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
            except FileNotFoundError:
                _create(parent_fd, name, directory)
                created.append(join(parent, name))
                return created
            if not stat.S_ISLNK(st.st_mode):
                if directory and not stat.S_ISDIR(st.st_mode):
                    raise InvalidArgument(f"{path} is not a directory in the image")
                if not directory and stat.S_ISDIR(st.st_mode):
                    raise InvalidArgument(
                        f"{path} is a directory in the image: a file cannot be mounted on it"
                    )
                return created
            target = os.readlink(name, dir_fd=parent_fd)
            comps = clean_name(target if target.startswith("/") else join(parent, target))
    raise InvalidArgument(f"{path}: too many levels of symbolic links in the image")


def _refuse_file_in_way(rootdir: RootDir, comps: Sequence[str], path: str) -> None:
    for depth in range(1, len(comps) + 1):
        found = _locate(rootdir, "/".join(comps[:depth]))
        if found is None or found[2] is None:
            return
        if not stat.S_ISDIR(found[2].st_mode):
            raise InvalidArgument(
                f"cannot create {path} in the image: /{'/'.join(comps[:depth])} is not a directory"
            )


def _create(parent_fd: int, name: str, directory: bool) -> None:
    if directory:
        os.mkdir(name, 0o755, dir_fd=parent_fd)
    else:
        os.close(
            os.open(
                name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o644,
                dir_fd=parent_fd,
            )
        )


def remove_created(root: Path, created: Sequence[str]) -> None:
    """Undo ``ensure``: remove what it created, deepest first, if still an empty directory
    or an empty file (whatever the container put there stays)."""
    with _opened(root) as rootdir:
        for path in reversed(created):
            parent, _, name = path.rpartition("/")
            with contextlib.suppress(OSError, NotFound):
                parent_fd = rootdir.dir_fd(parent)
                st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    os.rmdir(name, dir_fd=parent_fd)
                elif stat.S_ISREG(st.st_mode) and st.st_size == 0:
                    os.unlink(name, dir_fd=parent_fd)
