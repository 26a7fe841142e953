"""One walk of a snapshot directory into the index entries of the layer it holds.

An active snapshot's ``fs/`` holds only its changes, in the on-disk format of a layer (see
``fsnap.archive.apply``): whiteouts as empty ``.wh.NAME`` files, opaque directories marked
by an empty ``.wh..wh..opq``. ``scan_snapshot`` reads it back into the same shape
``apply_layer`` produces, so a diff can be written as a tar without knowing how the changes
were made. Disk says *what exists* (kind, size, mtime, link targets, hard links); metadata
the writer could not put on disk (owners and devices when unprivileged, xattrs outside
``user.*``) comes from ``overrides``, the snapshot's index records.

With ``overlay=True`` the directory may also be in overlayfs's format (``fsnap-overlay``
lower and upper directories): a 0/0 character device is a whiteout, and the xattrs
``trusted.overlay.opaque``, ``user.overlay.opaque`` or ``user.fuseoverlayfs.opaque`` set to
``y`` make a directory opaque. overlayfs's own bookkeeping xattrs are dropped then.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fsnap.archive.entry import Entry, Kind
from fsnap.archive.format import (
    OVERLAY_XATTR_PREFIXES,
    WHITEOUT_PREFIX,
    has_opaque_marker,
    has_overlay_opaque,
    is_whiteout_device,
    kind_of_mode,
)
from fsnap.errors import FailedPrecondition
from fsnap.fdtree import climb
from fsnap.progress import human_size

log = logging.getLogger(__name__)

_NO_OVERRIDES: Mapping[str, Entry] = {}


def scan_snapshot(
    fs_dir: Path,
    overrides: Mapping[str, Entry] = _NO_OVERRIDES,
    *,
    overlay: bool = False,
    max_holes: int | None = None,
) -> list[Entry]:
    """The entries of the layer in ``fs_dir``, ordered by path bytes (as an index is).

    The root itself is included only when ``overrides`` has an entry for it (a layer whose
    tar named ``./``). Raises ``FailedPrecondition`` when the directory cannot be read, or
    when its sparse files' holes (apparent size beyond the blocks on disk) add up to more
    than ``max_holes`` bytes: a layer tar carries holes as zeros, in full.
    """
    scanner = _Scanner(Path(fs_dir), overrides, overlay)
    try:
        scanner.walk()
    except OSError as e:
        raise FailedPrecondition(f"scanning snapshot directory {fs_dir}: {e}") from None
    if max_holes is not None and scanner.holes > max_holes:
        raise FailedPrecondition(_too_sparse(scanner, max_holes))
    return sorted(scanner.entries.values(), key=lambda e: e.key())


def _too_sparse(scanner: _Scanner, max_holes: int) -> str:
    _, size, path = scanner.sparsest
    return (
        f"sparse files hold {human_size(scanner.holes)} of holes, more than "
        f"{human_size(max_holes)}: a layer tar carries them as zeros, in full (the largest, "
        f"{path!r}, is {human_size(size)} long); remove or shrink them first"
    )


# What a file system says when it cannot report holes: then the file counts as all data.
_NO_HOLE_INFO = (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ESPIPE, errno.ENOSYS)


def _data_bytes(fd: int, size: int) -> int:
    """The bytes of an open file that are not holes (``SEEK_DATA``/``SEEK_HOLE``); all of
    them where the file system cannot tell (no hole is then counted against the limit)."""
    data = offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as e:
            if e.errno in _NO_HOLE_INFO and offset == 0:
                return size
            if e.errno != errno.ENXIO:  # ENXIO: only a hole is left
                raise
            break
        offset = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        data += offset - start
    return data


def without_sockets(entries: list[Entry]) -> tuple[list[Entry], list[str]]:
    """``entries`` minus Unix sockets, and the paths of the sockets left out: a socket is
    not content (containerd and docker leave them out of layers too)."""
    sockets = [entry.path for entry in entries if entry.kind == "socket"]
    if not sockets:
        return entries, []
    gone = set(sockets)  # with their other names (hard links to a socket)
    kept = [
        e for e in entries if e.path not in gone and not (e.kind == "hardlink" and e.link in gone)
    ]
    return kept, sockets + [e.path for e in entries if e.kind == "hardlink" and e.link in gone]


@dataclass
class _Level:
    """A directory the walk is in: names still to index (last first), then its whiteouts."""

    path: str
    dev: int
    ino: int
    names: list[str]
    whiteouts: list[str]

    @classmethod
    def of(cls, fd: int, path: str) -> _Level:
        names = sorted(os.listdir(fd), key=os.fsencode)
        st = os.fstat(fd)
        whiteouts = [n for n in names if n.startswith(WHITEOUT_PREFIX)]
        rest = [n for n in reversed(names) if not n.startswith(WHITEOUT_PREFIX)]
        return cls(path, st.st_dev, st.st_ino, rest, whiteouts)


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _compatible(disk: Kind, recorded: Kind) -> bool:
    """Whether an index record still describes what is on disk: same kind (a hard link is
    a file), or a device the unprivileged writer could only leave a placeholder file for."""
    family = {"hardlink": "file"}
    if family.get(disk, disk) == family.get(recorded, recorded):
        return True
    return disk == "file" and recorded in ("char", "block")


class _Scanner:
    """The state of one walk: entries so far, and the first path of every inode seen."""

    def __init__(self, root: Path, overrides: Mapping[str, Entry], overlay: bool) -> None:
        self.root = root
        self.overrides = overrides
        self.overlay = overlay
        self.entries: dict[str, Entry] = {}
        self._inodes: dict[int, str] = {}
        self.holes = 0  # bytes of regular files beyond their blocks on disk
        self.sparsest: tuple[int, int, str] = (0, 0, "")  # holes, size, path of the worst

    def walk(self) -> None:
        """Depth first, names in byte order (hard links pick the same first path as any
        earlier walk), iteratively with one directory fd held (``fsnap.fdtree``): a
        snapshot may be nested deeper than Python's recursion limit or the fd limit."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if "" in self.overrides:
                self._add_root(fd)
            stack = [_Level.of(fd, "")]
            while stack:
                level = stack[-1]
                if level.names:
                    name = level.names.pop()
                    child = self._add(fd, level.path, name)
                    if child is not None:
                        os.close(fd)
                        fd = child
                        stack.append(_Level.of(fd, _join(level.path, name)))
                    continue
                for name in level.whiteouts:
                    self._add_whiteout(level.path, name[len(WHITEOUT_PREFIX) :])
                stack.pop()
                if stack:
                    fd = climb(fd, stack[-1].dev, stack[-1].ino)
        finally:
            os.close(fd)

    def _add_root(self, fd: int) -> None:
        entry = self._entry_of(fd, "", os.fstat(fd), None)
        entry.opaque = entry.opaque or has_opaque_marker(fd)
        self.entries[""] = entry

    def _add(self, dir_fd: int, parent: str, name: str) -> int | None:
        """Index ``name``; for a directory, return its fd (the walk goes into it next)."""
        path = _join(parent, name)
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if self.overlay and is_whiteout_device(st):
            self.entries[path] = Entry(path, "whiteout")
            return None
        if stat.S_ISDIR(st.st_mode):
            fd = os.open(
                name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd
            )
            try:
                entry = self._entry_of(fd, path, st, None)
                entry.opaque = entry.opaque or has_opaque_marker(fd) or self._overlay_opaque(fd)
            except BaseException:
                os.close(fd)
                raise
            self.entries[path] = entry
            return fd
        link = os.readlink(name, dir_fd=dir_fd) if stat.S_ISLNK(st.st_mode) else None
        entry = self._entry_of(dir_fd, path, st, name if link is None else None, link)
        if (stat.S_ISREG(st.st_mode) or stat.S_ISSOCK(st.st_mode)) and st.st_nlink > 1:
            entry = self._link_or_first(entry, st.st_ino)
        if entry.kind == "file" and st.st_blocks * 512 < st.st_size:  # maybe sparse
            self._count_holes(dir_fd, name, path, st.st_size)  # (a hard link's data: once)
        self.entries[path] = entry
        return None

    def _count_holes(self, dir_fd: int, name: str, path: str, size: int) -> None:
        """Add the holes of a file with fewer blocks than its size (sparse, or compressed
        by the file system: ``SEEK_HOLE`` tells them apart)."""
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        fd = os.open(name, flags, dir_fd=dir_fd)
        try:
            holes = size - _data_bytes(fd, size)
        finally:
            os.close(fd)
        self.holes += holes
        if holes > self.sparsest[0]:
            self.sparsest = (holes, size, path)

    def _add_whiteout(self, parent: str, name: str) -> None:
        """``.wh.NAME`` deletes NAME below, unless this layer has NAME too: a directory of
        this layer is then opaque (as the applier does), anything else simply wins."""
        if name.startswith(WHITEOUT_PREFIX) or name in ("", ".", ".."):
            return  # the opaque marker (read with its directory) or whiteout metadata
        path = _join(parent, name)
        existing = self.entries.get(path)
        if existing is None:
            self.entries[path] = Entry(path, "whiteout")
        elif existing.kind == "dir":
            existing.opaque = True

    def _link_or_first(self, entry: Entry, inode: int) -> Entry:
        """The first path of an inode is its ``file``; later ones are ``hardlink``s to it,
        sharing its metadata (as ``apply_layer`` indexes them)."""
        first = self._inodes.setdefault(inode, entry.path)
        if first == entry.path:
            return entry
        owner = self.entries[first]
        return dataclasses.replace(
            owner, path=entry.path, kind="hardlink", link=first, xattrs=dict(owner.xattrs)
        )

    def _entry_of(
        self,
        fd: int,
        path: str,
        st: os.stat_result,
        name: str | None,
        link: str | None = None,
    ) -> Entry:
        """What disk says about one path, corrected by its index record if it has one.

        ``fd`` is the path's own descriptor (``name`` None) or its directory's (``name``
        set); symlinks (``link`` set) carry no xattrs we could read without following.
        """
        kind = kind_of_mode(st.st_mode)
        entry = Entry(
            path=path,
            kind=kind,
            mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            size=st.st_size if kind == "file" else 0,
            mtime=st.st_mtime_ns,
            link=link or "",
            devmajor=os.major(st.st_rdev) if kind in ("char", "block") else 0,
            devminor=os.minor(st.st_rdev) if kind in ("char", "block") else 0,
            xattrs={} if link is not None else self._xattrs(fd, name),
            atime=st.st_atime_ns,
        )
        recorded = self.overrides.get(path)
        if recorded is None:
            return entry
        if not _compatible(kind, recorded.kind):
            log.debug("index record of %r (%s) is stale: disk has a %s", path, recorded.kind, kind)
            return entry
        merged = dataclasses.replace(
            recorded,
            path=path,
            size=entry.size,
            mtime=entry.mtime,
            atime=entry.atime,
            xattrs=dict(recorded.xattrs),
        )
        if recorded.kind == "hardlink":
            merged.kind, merged.link = "file", ""  # the walk decides who links to whom
        if kind == "symlink":
            merged.link = entry.link
        if merged.kind in ("char", "block"):
            merged.size = 0
        return merged

    def _xattrs(self, fd: int, name: str | None) -> dict[str, bytes]:
        target: int | str = fd if name is None else f"/proc/self/fd/{fd}/{name}"
        nofollow = name is not None  # an fd is the file itself: nothing to follow
        try:
            names = os.listxattr(target, follow_symlinks=not nofollow)
        except OSError:
            return {}
        found: dict[str, bytes] = {}
        for key in sorted(names):
            if self.overlay and key.startswith(OVERLAY_XATTR_PREFIXES):
                continue
            try:
                found[key] = os.getxattr(target, key, follow_symlinks=not nofollow)
            except OSError as e:
                log.debug("xattr %s of %r unreadable: %s", key, name, e)
        return found

    def _overlay_opaque(self, dir_fd: int) -> bool:
        return self.overlay and has_overlay_opaque(dir_fd)
