"""Resolving tar member names inside a snapshot root, as if the root were ``/``.

This is the containment boundary of the applier. A layer is hostile until proven otherwise:
its names may hold ``..`` or start with ``/``, and earlier members may have planted symlinks
(to ``/``, to ``..``, chains of them) on the path of later ones. ``RootDir`` therefore never
hands a path string to the kernel for resolution. It walks names one component at a time
from directory file descriptors, looks at each component with ``lstat`` (never following),
reads symlinks itself and restarts their targets from the root (absolute) or from the
current directory (relative), and clamps ``..`` at the root. Every directory it opens is
opened with ``O_NOFOLLOW`` relative to a directory it already holds, so what the kernel acts
on is exactly what was checked (no time-of-check/time-of-use gap through path strings).

Resolved directories are cached by their canonical path (a path whose every component is a
real directory), so the common case (many members in one directory) costs a dict lookup
instead of a walk. Removing a directory evicts it and everything beneath from the cache.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections import OrderedDict, deque
from collections.abc import Callable
from pathlib import Path

from fsnap.errors import InvalidArgument, NotFound

_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_LINKS = 255  # like the kernel's limit on symlinks met in one lookup (ELOOP)
_MAX_FDS = 1024
# what _step found; symlink targets are other strings (they are never empty on Linux)
_DIR = "\0dir"
_MISSING = "\0missing"


def clean_name(name: str) -> list[str]:
    """A member name as root-relative components: lexically cleaned, ``..`` clamped at ``/``.

    Like containerd, the name is cleaned *before* symlinks are looked at, so
    ``dne/../.wh.etc`` names ``.wh.etc`` in the root. An empty list names the root itself.
    """
    cleaned = posixpath.normpath("/" + name)
    return [c for c in cleaned.split("/") if c]


def join(parent: str, name: str) -> str:
    """Join index paths ('' is the root)."""
    return f"{parent}/{name}" if parent else name


class RootDir:
    """Directory file descriptors for one snapshot root, and contained lookups in it.

    ``on_implicit(path)`` is called for each directory created because a member needed it as
    a parent; ``on_replace(path)`` before a non-directory is removed to make room for one.
    """

    def __init__(
        self,
        root: Path,
        on_implicit: Callable[[str], None] | None = None,
        on_replace: Callable[[str], None] | None = None,
    ) -> None:
        self.root_fd = os.open(root, _OPEN_DIR)
        self._fds: OrderedDict[str, int] = OrderedDict({"": self.root_fd})
        self._on_implicit = on_implicit or (lambda path: None)
        self._on_replace = on_replace or (lambda path: None)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def dir_fd(self, path: str) -> int:
        """The fd of the directory at canonical ``path``, opened component by component."""
        fd = self._fds.get(path)
        if fd is not None:
            self._fds.move_to_end(path)
            return fd
        parent, _, name = path.rpartition("/")
        parent_fd = self.dir_fd(parent)
        fd = os.open(name, _OPEN_DIR, dir_fd=parent_fd)
        self._fds[path] = fd
        if len(self._fds) > _MAX_FDS:
            self._evict_oldest()
        return fd

    def _evict_oldest(self) -> None:
        for key in self._fds:
            if key:  # never the root
                os.close(self._fds.pop(key))
                return

    def forget(self, path: str) -> None:
        """Drop cached fds of ``path`` and below (it was removed or replaced)."""
        prefix = path + "/"
        for key in [k for k in self._fds if k == path or k.startswith(prefix)]:
            if key:
                os.close(self._fds.pop(key))

    def resolve_dir(self, components: list[str], *, create: bool) -> str:
        """Canonical path of the directory named by ``components``, following symlinks inside
        the root. With ``create``, missing directories are made (and reported as implicit) and
        a non-directory in the way is replaced; without, a missing one is ``NotFound``."""
        joined = "/".join(components)
        if joined in self._fds:
            self._fds.move_to_end(joined)
            return joined
        stack: list[str] = []
        real = 0  # stack[:real] exist on disk; the rest is lexical, below a missing name
        pending = deque(components)
        links = 0
        while pending:
            comp = pending.popleft()
            if comp in ("", "."):
                continue
            if comp == "..":
                if stack:
                    stack.pop()
                real = min(real, len(stack))
                continue
            if real < len(stack):
                stack.append(comp)  # nothing exists here, so no symlink can be met
                continue
            here = "/".join(stack)
            path = join(here, comp)
            target = _DIR if path in self._fds else self._step(here, comp, path, create)
            if target in (_DIR, _MISSING):
                stack.append(comp)
                real += target == _DIR
                continue
            links += 1
            if links > _MAX_LINKS:
                raise InvalidArgument(f"invalid archive: too many levels of symlinks at {path!r}")
            if target.startswith("/"):
                stack, real = [], 0
            pending.extendleft(reversed(target.split("/")))
        self._make_missing(stack, real, create)
        return "/".join(stack)

    def _step(self, here: str, comp: str, path: str, create: bool) -> str:
        """Look at one component: ``_DIR``, ``_MISSING`` or its symlink target. With
        ``create``, a non-directory in the way is replaced by a directory."""
        parent_fd = self.dir_fd(here)
        try:
            st = os.stat(comp, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return _MISSING
        if stat.S_ISLNK(st.st_mode):
            return os.readlink(comp, dir_fd=parent_fd)
        if stat.S_ISDIR(st.st_mode):
            return _DIR
        if not create:
            raise NotFound(f"{path!r} is not a directory")
        # A later member needs a directory where an earlier one put a file: the later wins.
        self._on_replace(path)
        os.unlink(comp, dir_fd=parent_fd)
        os.mkdir(comp, 0o755, dir_fd=parent_fd)
        self._on_implicit(path)
        return _DIR

    def _make_missing(self, stack: list[str], real: int, create: bool) -> None:
        """Create the directories below the last existing one (implicit), or fail."""
        for depth in range(real, len(stack)):
            path = "/".join(stack[: depth + 1])
            if not create:
                raise NotFound(f"{path!r} does not exist in the layer")
            os.mkdir(stack[depth], 0o755, dir_fd=self.dir_fd("/".join(stack[:depth])))
            self._on_implicit(path)

    def remove(self, parent_fd: int, name: str, path: str) -> None:
        """Remove whatever is at ``name`` in ``parent_fd`` (a whole tree for a directory)."""
        try:
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            self.forget(path)
            _remove_dir(parent_fd, name)
        else:
            os.unlink(name, dir_fd=parent_fd)


def _remove_dir(parent_fd: int, name: str) -> None:
    """Delete directory ``name`` and its contents through fds, never following a symlink."""
    fd = os.open(name, _OPEN_DIR, dir_fd=parent_fd)
    try:
        with os.scandir(fd) as it:
            entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
        for entry, is_dir in entries:
            if is_dir:
                _remove_dir(fd, entry)
            else:
                os.unlink(entry, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)
