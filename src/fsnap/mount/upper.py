"""The upper directory of a writable mount: every disk change an active snapshot receives.

All functions here block (they touch the disk); the writable file system calls them through
``trio.to_thread``. Paths are bytes relative to the snapshot's ``fs/`` (``b""`` is ``fs/``).

On-disk format of an active snapshot (``<id>/fs``), which ``fsnap.diff.scan`` reads back
into a layer index at commit time (the same format as an unpacked layer, see
``fsnap.archive.apply``):

- ``fs/`` holds only the changes: files created or copied up (full content), directories
  created or copied up, symlinks, fifos, Unix sockets (left out by commits), and devices
  (``mknod`` when the daemon is root; otherwise an empty regular file in their place).
- ``DIR/.wh.NAME``, an empty regular file, deletes NAME of the lower layers. Users cannot
  create a name starting with ``.wh.`` through the mount: EINVAL. A lower name longer than
  251 bytes cannot be deleted (its whiteout name would exceed 255): ENAMETOOLONG.
- ``DIR/.wh..wh..opq``, an empty regular file, makes DIR opaque: the lower layers show
  nothing under it. A lower directory removed and created again is opaque; a directory
  renamed is copied up with everything below it, each directory of it made opaque (no
  redirects: an OCI layer cannot express them), so renames never fail with EXDEV.
- Metadata: a root daemon puts owner, mode, times, xattrs and devices on disk. An
  unprivileged daemon cannot, so for every path whose metadata disk cannot hold (another
  owner, a device, any xattr, a mode without the owner's rw(x) bits, which the daemon keeps
  on disk for itself) the snapshot's index holds an *override*: the full ``Entry`` of that
  path (kind, owner, mode, devices, xattrs). Size, mtime and atime always come from disk.
- The root of the mount is in the upper layer once its metadata changed: then the index
  has an override for ``""`` (in both modes), else the lower layers' root stands.
- Copy-up of a lower object happens in ``work/``: a temporary copy with content, mode,
  owner, times and xattrs, fsync'ed, then renamed to its place in ``fs/``. A crash leaves
  at most a temporary in ``work/`` (cleared when the next mount starts), never a partial
  file in ``fs/``. A hard-linked lower file is copied once, and its other names are hard
  links to that copy in ``fs/`` too: the links stay one inode, and the layer records them.

Whiteouts and opaque markers are written by a markers strategy of ``fsnap.archive.format``:
the format above by default; ``OverlayMarkers`` writes overlayfs's instead (0/0 character
devices, ``trusted.overlay.opaque``) for ``fsnap-overlay`` upper directories.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from fsnap.archive.entry import Entry
from fsnap.archive.format import KIND_BITS, LayerMarkers
from fsnap.mount.fastpath import copy_all, open_any_depth, open_source
from fsnap.snapshots import disk

_RENAME_EXCHANGE = 2
# renameat2 (glibc 2.28+): Python's os module has no RENAME_EXCHANGE.
_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.renameat2.argtypes = [
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_uint,
]
# A temporary's name is new and random: O_CREAT | O_EXCL never follows a symlink there.
_NEW = os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
# A descriptor that only anchors ``*at`` calls in a directory (no read permission needed).
_ANCHOR = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
# What every temporary is made with, whatever its kind: owner-only (x lets the daemon fill
# a directory) until ``apply`` gives it its own mode, before it leaves ``work/``.
_TEMP_MODE = 0o700


def join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


def _proc(fd: int, name: bytes = b"") -> bytes:
    """A short path through ``/proc/self/fd`` for ``name`` in directory ``fd``."""
    base = f"/proc/self/fd/{fd}".encode()
    return join(base, name) if name else base


class Upper:
    """The ``fs/`` and ``work/`` directories of one active snapshot.

    ``privileged``: metadata goes to disk as is. Otherwise the daemon keeps its own rw(x)
    bits on disk (it must be able to write what it serves) and ``needs_override`` says when
    the index has to carry the entry instead."""

    def __init__(
        self, fs_dir: Path, work_dir: Path, privileged: bool, markers: LayerMarkers | None = None
    ) -> None:
        self.fs = os.fsencode(fs_dir)
        self.work = os.fsencode(work_dir)
        self.privileged = privileged
        self.markers = markers or LayerMarkers()
        self.euid = os.geteuid()
        self.egid = os.getegid()

    def path(self, rel: bytes) -> bytes:
        """The whole path of ``rel``: for messages and short paths only (it may be longer
        than PATH_MAX; system calls go through ``_at``)."""
        return join(self.fs, rel) if rel else self.fs

    # --- reaching a path at any depth --------------------------------------------------

    def _open_dir(self, rel: bytes) -> int:
        """An ``O_PATH`` descriptor of directory ``rel``, however deep."""
        return open_any_depth(self.path(rel), _ANCHOR)

    @contextlib.contextmanager
    def _at(self, rel: bytes) -> Iterator[tuple[int, bytes]]:
        """(descriptor of ``rel``'s directory, ``rel``'s name) for ``*at`` system calls;
        the root (``b""``) is named in the directory above ``fs/``."""
        parent, _, name = rel.rpartition(b"/")
        if not rel:
            parent_path, _, name = self.fs.rpartition(b"/")
            fd = os.open(parent_path or b"/", _ANCHOR)
        else:
            fd = self._open_dir(parent)
        try:
            yield fd, name
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _short(self, rel: bytes) -> Iterator[bytes]:
        """A short path naming ``rel`` (through ``/proc/self/fd``), for calls that take no
        directory descriptor (xattrs, markers, tree removal)."""
        with self._at(rel) as (fd, name):
            yield _proc(fd, name)

    # --- metadata policy ------------------------------------------------------------------

    def disk_mode(self, entry: Entry) -> int:
        if self.privileged:
            return entry.mode & 0o7777
        keep = 0o700 if entry.kind == "dir" else 0o600
        return (entry.mode & 0o7777) | keep

    def needs_override(self, entry: Entry) -> bool:
        """Does disk fall short of ``entry`` (so the index must hold it)?"""
        if self.privileged:
            return False
        if entry.uid != self.euid or entry.gid != self.egid or entry.xattrs:
            return True
        if entry.kind in ("char", "block"):
            return True
        return entry.kind != "symlink" and self.disk_mode(entry) != entry.mode & 0o7777

    # --- start of a mount -------------------------------------------------------------------

    def clear_work(self) -> None:
        """Drop what a crashed copy-up left in ``work/`` (never visible in ``fs/``)."""
        os.makedirs(self.work, mode=0o700, exist_ok=True)
        for name in os.listdir(self.work):
            disk.remove_tree(Path(os.fsdecode(join(self.work, name))))

    # --- creating -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _times_kept(self, rel: bytes) -> Iterator[None]:
        """Copy-up and its markers are not changes a user made: the directory written into
        keeps its times."""
        with self._at(rel) as (fd, name):
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            yield
            os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=fd, follow_symlinks=False)

    def copy_up(self, rel: bytes, entry: Entry, source: str | None = None) -> None:
        """``place`` a copy of a lower object, leaving its directory's times as they were."""
        with self._times_kept(rel.rpartition(b"/")[0]):
            self.place(rel, entry, source)

    def place(
        self, rel: bytes, entry: Entry, source: str | None = None, opaque: bool = False
    ) -> None:
        """Build ``entry`` in ``work/`` (content copied from ``source``, metadata applied,
        fsync'ed), then rename it to ``rel`` in one step."""
        temp = join(self.work, b"new-" + secrets.token_hex().encode())
        try:
            self._build(temp, entry, source)
            if opaque:
                self.markers.mark_opaque(temp)
            self.apply(temp, entry)
            with self._at(rel) as (fd, name):
                os.rename(temp, name, dst_dir_fd=fd)
        except BaseException:
            with contextlib.suppress(OSError):
                disk.remove_tree(Path(os.fsdecode(temp)))
            raise

    def _build(self, temp: bytes, entry: Entry, source: str | None) -> None:
        kind = entry.kind
        if kind == "dir":
            os.mkdir(temp, _TEMP_MODE)
        elif kind == "symlink":
            os.symlink(entry.link, temp)
        elif kind == "fifo":
            os.mkfifo(temp, _TEMP_MODE)
        elif kind == "socket":  # needs no privilege: what bind(2) makes
            os.mknod(temp, stat.S_IFSOCK | _TEMP_MODE)
        elif kind in ("char", "block") and self.privileged:
            os.mknod(temp, KIND_BITS[kind] | _TEMP_MODE, os.makedev(entry.devmajor, entry.devminor))
        else:
            self._copy(temp, source)

    def _copy(self, temp: bytes, source: str | None) -> None:
        fd = os.open(temp, os.O_WRONLY | _NEW, _TEMP_MODE)
        try:
            if source is not None:
                src = open_source(source)
                try:
                    copy_all(src, fd)
                finally:
                    os.close(src)
            os.fsync(fd)
        finally:
            os.close(fd)

    def apply(self, path: bytes, entry: Entry, times: bool = True) -> None:
        """Put ``entry``'s metadata on ``path`` as far as this daemon may (owner before mode:
        chown clears setuid bits)."""
        symlink = entry.kind == "symlink"
        if self.privileged:
            os.chown(path, entry.uid, entry.gid, follow_symlinks=False)
            self._set_xattrs(path, entry)
        if not symlink:
            os.chmod(path, self.disk_mode(entry))
        if times:
            atime = entry.mtime if entry.atime is None else entry.atime
            os.utime(path, ns=(atime, entry.mtime), follow_symlinks=False)

    def _set_xattrs(self, path: bytes, entry: Entry) -> None:
        want = {os.fsencode(k): v for k, v in entry.xattrs.items()}
        for name in os.listxattr(path, follow_symlinks=False):
            key = os.fsencode(name)
            if key not in want and key not in self.markers.own_xattrs:
                os.removexattr(path, key, follow_symlinks=False)
        for key, value in want.items():
            os.setxattr(path, key, value, follow_symlinks=False)

    def apply_at(self, rel: bytes, entry: Entry, times: bool = True) -> None:
        """``apply`` to ``rel`` in ``fs/``, at any depth."""
        with self._short(rel) as path:
            self.apply(path, entry, times)

    def set_root(self, entry: Entry) -> None:
        """The mount's root changes for the first time: give ``fs/`` its metadata."""
        self.apply(self.fs, entry)

    def link(self, existing: bytes, new: bytes) -> None:
        with self._at(existing) as (old_fd, old), self._at(new) as (new_fd, name):
            os.link(old, name, src_dir_fd=old_fd, dst_dir_fd=new_fd, follow_symlinks=False)

    def link_up(self, existing: bytes, new: bytes) -> None:
        """Another name of a copied-up hard link, its directory's times kept."""
        with self._times_kept(new.rpartition(b"/")[0]):
            self.link(existing, new)

    # --- whiteouts and opaque markers -------------------------------------------------------

    def whiteout(self, parent: bytes, name: bytes) -> None:
        with self._short(parent) as path:
            self.markers.whiteout(path, name)

    def unwhiteout(self, parent: bytes, name: bytes) -> None:
        with self._short(parent) as path:
            self.markers.unwhiteout(path, name)

    def mark_opaque(self, rel: bytes) -> None:
        with self._times_kept(rel), self._short(rel) as path:
            self.markers.mark_opaque(path)

    # --- removing and moving ------------------------------------------------------------------

    def remove(self, rel: bytes | None, whiteout: tuple[bytes, bytes] | None) -> None:
        """Remove ``rel`` from ``fs/`` (a directory with the markers it holds), then leave
        a whiteout for the lower layers' name if there is one."""
        if rel is not None:
            with self._at(rel) as (fd, name):
                if stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                    disk.remove_tree(Path(os.fsdecode(_proc(fd, name))))
                else:
                    os.unlink(name, dir_fd=fd)
        if whiteout is not None:
            self.whiteout(*whiteout)

    def rename(
        self, old: bytes, new: bytes, clear_dir: bool, whiteout: tuple[bytes, bytes] | None
    ) -> None:
        """``rename(2)`` in ``fs/``; ``clear_dir``: the target is an (empty in the merged
        view) upper directory that may hold markers, removed first."""
        with self._at(old) as (old_fd, old_name), self._at(new) as (new_fd, name):
            if clear_dir:
                disk.remove_tree(Path(os.fsdecode(_proc(new_fd, name))))
            self.markers.unwhiteout(_proc(new_fd), name)
            os.rename(old_name, name, src_dir_fd=old_fd, dst_dir_fd=new_fd)
        if whiteout is not None:
            self.whiteout(*whiteout)

    def exchange(self, first: bytes, second: bytes) -> None:
        """Swap two names in ``fs/`` atomically (``renameat2(RENAME_EXCHANGE)``)."""
        with self._at(first) as (fd1, name1), self._at(second) as (fd2, name2):
            if _LIBC.renameat2(fd1, name1, fd2, name2, _RENAME_EXCHANGE) != 0:
                code = ctypes.get_errno()
                raise OSError(code, os.strerror(code), os.fsdecode(self.path(first)))

    # --- files ------------------------------------------------------------------------------------

    def open(self, rel: bytes, flags: int) -> int:
        with self._at(rel) as (fd, name):
            return os.open(name, flags | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=fd)

    def lstat(self, rel: bytes) -> os.stat_result:
        with self._at(rel) as (fd, name):
            return os.stat(name, dir_fd=fd, follow_symlinks=False)

    def truncate(self, rel: bytes, size: int) -> None:
        fd = self.open(rel, os.O_WRONLY)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)

    def set_times(self, rel: bytes, atime: int | None, mtime: int | None) -> None:
        with self._at(rel) as (fd, name):
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            os.utime(
                name,
                ns=(
                    st.st_atime_ns if atime is None else atime,
                    st.st_mtime_ns if mtime is None else mtime,
                ),
                dir_fd=fd,
                follow_symlinks=False,
            )

    def fsync_dir(self, rel: bytes) -> None:
        fd = self.open(rel, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def set_xattr(self, rel: bytes, name: bytes, value: bytes | None) -> None:
        """Set (or with None remove) one xattr on disk (root daemons only)."""
        with self._short(rel) as path:
            self._set_xattr(path, name, value)

    @staticmethod
    def _set_xattr(path: bytes, name: bytes, value: bytes | None) -> None:
        try:
            if value is None:
                os.removexattr(path, name, follow_symlinks=False)
            else:
                os.setxattr(path, name, value, follow_symlinks=False)
        except OSError as exc:
            if exc.errno != errno.ENODATA or value is not None:
                raise
