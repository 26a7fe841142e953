"""The on-disk layer format, in one place: how a layer says "deleted" and "opaque", and
which file type an index kind is.

Two dialects exist, and fsnap reads both:

- **OCI** (the image spec's layer tars, and fsnap's own layer and snapshot directories):
  ``DIR/.wh.NAME``, an empty regular file, deletes NAME of the layers beneath;
  ``DIR/.wh..wh..opq`` makes DIR opaque (the layers beneath show nothing under it, this
  layer's entries stay). Other names starting with ``.wh..wh.`` are whiteout metadata
  (aufs's), which nothing needs. A name of a directory entry is at most ``NAME_MAX`` (255)
  bytes, so a name longer than 251 bytes has no whiteout.
- **overlayfs** (``fsnap-overlay``'s lower and upper directories, and what containerd's
  overlay mounts leave in a snapshot fsnap serves): a whiteout is a character device 0/0 at
  the deleted name; an opaque directory carries the xattr ``trusted.overlay.opaque=y``
  (``user.overlay.opaque`` under ``userxattr``, ``user.fuseoverlayfs.opaque`` from
  fuse-overlayfs). Writing either needs privilege (mknod, the ``trusted.`` namespace), so an
  unprivileged writer falls back to the OCI form, which overlayfs-compatible readers accept.

``LayerMarkers`` writes the OCI form into a directory, ``OverlayMarkers`` overlayfs's: the
writable mount's upper directory takes either (``fsnap.mount.upper``).
"""

from __future__ import annotations

import contextlib
import os
import stat

from fsnap.archive.entry import Kind

NAME_MAX = 255
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
# Names starting with this are aufs's whiteout metadata (the opaque marker among them).
WHITEOUT_META_PREFIX = WHITEOUT_PREFIX * 2
WHITEOUT = os.fsencode(WHITEOUT_PREFIX)
OPAQUE = os.fsencode(OPAQUE_MARKER)

OVERLAY_OPAQUE_XATTR = b"trusted.overlay.opaque"
OVERLAY_OPAQUE_XATTRS = (
    "trusted.overlay.opaque",
    "user.overlay.opaque",
    "user.fuseoverlayfs.opaque",
)
# overlayfs's bookkeeping xattrs: never content, dropped when a directory is read as a layer.
OVERLAY_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.", "user.fuseoverlayfs.")

# The file type bits of every index kind (a hard link is a regular file's other name).
KIND_BITS: dict[Kind, int] = {
    "file": stat.S_IFREG,
    "hardlink": stat.S_IFREG,
    "dir": stat.S_IFDIR,
    "symlink": stat.S_IFLNK,
    "char": stat.S_IFCHR,
    "block": stat.S_IFBLK,
    "fifo": stat.S_IFIFO,
    "socket": stat.S_IFSOCK,
}
_MODE_KINDS: dict[int, Kind] = {
    bits: kind for kind, bits in KIND_BITS.items() if kind != "hardlink"
}


def kind_of_mode(mode: int) -> Kind:
    """The kind of an ``st_mode`` (a regular file for anything unknown)."""
    return _MODE_KINDS.get(stat.S_IFMT(mode), "file")


def has_whiteout(name: bytes) -> bool:
    """Can ``name`` be deleted by a ``.wh.`` file (is the marker's name short enough)?"""
    return len(WHITEOUT) + len(name) <= NAME_MAX


def is_whiteout_device(st: os.stat_result) -> bool:
    """Is this overlayfs's whiteout, a 0/0 character device?"""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def has_opaque_marker(dir_fd: int) -> bool:
    """Does the directory open as ``dir_fd`` hold the OCI opaque marker?"""
    try:
        st = os.stat(OPAQUE_MARKER, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode)


def has_overlay_opaque(dir_fd: int) -> bool:
    """Is the directory open as ``dir_fd`` opaque by one of overlayfs's xattrs?"""
    for key in OVERLAY_OPAQUE_XATTRS:
        try:
            if os.getxattr(dir_fd, key) == b"y":
                return True
        except OSError:
            continue
    return False


def _join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


def _touch(path: bytes) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644))


class LayerMarkers:
    """Writes "deleted" and "opaque" into a directory in the OCI form (``.wh.NAME`` files,
    ``.wh..wh..opq`` markers). A strategy object, so that a writer of directories (the
    writable mount's ``Upper``) takes another dialect (``OverlayMarkers``) unchanged.

    Paths are absolute bytes of the directory concerned. ``own_xattrs`` are xattrs the
    dialect itself keeps on disk: metadata updates never strip them."""

    own_xattrs: frozenset[bytes] = frozenset()

    def whiteout(self, dir_path: bytes, name: bytes) -> None:
        _touch(_join(dir_path, WHITEOUT + name))

    def unwhiteout(self, dir_path: bytes, name: bytes) -> None:
        if not has_whiteout(name):
            return  # no whiteout can exist for it (and none can be written: ENAMETOOLONG)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_join(dir_path, WHITEOUT + name))

    def mark_opaque(self, dir_path: bytes) -> None:
        _touch(_join(dir_path, OPAQUE))


class OverlayMarkers(LayerMarkers):
    """overlayfs's form: whiteouts as 0/0 character devices when ``privileged``, else
    ``.wh.NAME`` files; opaque directories by ``trusted.overlay.opaque`` when
    ``privileged``, else by marker.

    Removing a whiteout removes either form, so an upper directory written by another
    overlay implementation (or by this one with other rights) is handled too."""

    def __init__(self, privileged: bool) -> None:
        self.privileged = privileged
        self.own_xattrs = frozenset({OVERLAY_OPAQUE_XATTR}) if privileged else frozenset()

    def whiteout(self, dir_path: bytes, name: bytes) -> None:
        if self.privileged:
            os.mknod(_join(dir_path, name), stat.S_IFCHR | 0o000, os.makedev(0, 0))
        else:
            super().whiteout(dir_path, name)

    def unwhiteout(self, dir_path: bytes, name: bytes) -> None:
        path = _join(dir_path, name)
        with contextlib.suppress(FileNotFoundError):
            if is_whiteout_device(os.lstat(path)):
                os.unlink(path)
        super().unwhiteout(dir_path, name)

    def mark_opaque(self, dir_path: bytes) -> None:
        if self.privileged:
            os.setxattr(dir_path, OVERLAY_OPAQUE_XATTR, b"y", follow_symlinks=False)
        else:
            super().mark_opaque(dir_path)
