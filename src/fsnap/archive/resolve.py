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

import errno
import os
import posixpath
import stat
from collections import OrderedDict, deque
from collections.abc import Callable
from pathlib import Path

from fsnap.errors import InvalidArgument, NotFound
from fsnap.fdtree import remove_tree_at

_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_LINKS = 255  # like the kernel's limit on symlinks met in one lookup (ELOOP)
# Directory fds kept open (least recently used closed first). Far below 1,024, the soft
# limit on open files most processes get (Debian's shells, systemd's services), which this
# cache shares with all else the process holds (sockets, LMDB, the blob being read): at
# 1,024 a layer of 1,020 directories failed with EMFILE. Measured on a 1,500-directory
# layer: CPU time the same at 256 as at 1,024 (members come grouped by directory; a miss
# costs one open).
_MAX_FDS = 256
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
        missing = []  # iterative, not recursive: a path may be thousands of levels deep
        known = path
        while known not in self._fds:
            known, _, name = known.rpartition("/")
            missing.append(name)
        fd = self._fds[known]
        for name in reversed(missing):
            known = join(known, name)
            fd = os.open(name, _OPEN_DIR, dir_fd=fd)
            self._remember(known, fd)
        return fd

    def _remember(self, path: str, fd: int) -> None:
        """Cache ``fd`` as the directory at canonical ``path`` (at most ``_MAX_FDS``)."""
        self._fds[path] = fd
        if len(self._fds) > _MAX_FDS:
            self._evict_oldest(keep=path)

    def _evict_oldest(self, keep: str) -> None:
        """Close the least recently used fd: never the root's, nor ``keep``'s (the next
        step of a walk opens relative to it)."""
        for key in self._fds:
            if key and key != keep:
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
        stack, here = self._cached_start(components, joined)
        real = len(stack)  # stack[:real] exist on disk; the rest is lexical, below a missing name
        pending = deque(components[len(stack) :])
        links = 0
        while pending:  # ``here`` is always "/".join(stack), kept up to date, not rejoined
            comp = pending.popleft()
            if comp in ("", "."):
                continue
            if comp == "..":
                if stack:
                    stack.pop()
                    here = here.rpartition("/")[0]
                real = min(real, len(stack))
                continue
            path = join(here, comp)
            if real < len(stack):
                stack.append(comp)  # nothing exists here, so no symlink can be met
                here = path
                continue
            target = _DIR if path in self._fds else self._step(here, comp, path, create)
            if target in (_DIR, _MISSING):
                stack.append(comp)
                here = path
                real += target == _DIR
                continue
            links += 1
            if links > _MAX_LINKS:
                raise InvalidArgument(f"invalid archive: too many levels of symlinks at {path!r}")
            if target.startswith("/"):
                stack, here, real = [], "", 0
            pending.extendleft(reversed(target.split("/")))
        self._make_missing(stack, real, create)
        return here

    def _cached_start(self, components: list[str], joined: str) -> tuple[list[str], str]:
        """The longest leading run of ``components`` that is a cached (so real, canonical)
        directory, and its path: the walk starts there instead of at the root, so a member
        deep in the tree costs a few steps, not one per level (names from ``clean_name``;
        anything else starts at the root)."""
        if "" in components or "." in components or ".." in components:
            return [], ""
        known, count = joined, len(components)
        while count and known not in self._fds:
            known = known.rpartition("/")[0]
            count -= 1
        return components[:count], known if count else ""

    def _step(self, here: str, comp: str, path: str, create: bool) -> str:
        """Look at one component: ``_DIR``, ``_MISSING`` or its symlink target. With
        ``create``, a non-directory in the way is replaced by a directory.

        A directory is opened straight away (``O_DIRECTORY | O_NOFOLLOW``: the kernel
        refuses a symlink or anything else, without opening it) and its fd cached: the
        walk or the member needs it next, so the usual case costs that one open instead
        of an lstat first; only a refusal is looked at."""
        parent_fd = self.dir_fd(here)
        try:
            self._remember(path, os.open(comp, _OPEN_DIR, dir_fd=parent_fd))
            return _DIR
        except FileNotFoundError:
            return _MISSING
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EACCES):
                raise
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

    def remove(self, parent_fd: int, name: str, path: str, *, directory: bool) -> None:
        """Remove ``name`` in ``parent_fd``, a whole tree if it is a ``directory`` (the
        caller has just looked at it: one lstat, not two)."""
        if directory:
            self.forget(path)
            remove_tree_at(parent_fd, name)
        else:
            os.unlink(name, dir_fd=parent_fd)
