"""overlayfs's way of writing "deleted" and "opaque" into an upper directory.

Kernel overlayfs writes a whiteout as a character device 0/0 at the deleted name, and an
opaque directory as the xattr ``trusted.overlay.opaque=y``. Both need privilege (mknod,
the ``trusted.`` namespace), so a daemon without it falls back to what fuse-overlayfs and
the OCI layer format both read: an empty ``.wh.NAME`` file and a ``.wh..wh..opq`` marker.
Either way ``fsnap.diff.scan.scan_snapshot(..., overlay=True)`` reads the result back.
"""

from __future__ import annotations

import contextlib
import os
import stat

from fsnap.mount.upper import WHITEOUT, Markers, join

OPAQUE_XATTR = b"trusted.overlay.opaque"


def is_whiteout_device(path: bytes) -> bool:
    """Is ``path`` overlayfs's whiteout, a 0/0 character device?"""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


class OverlayMarkers(Markers):
    """Whiteouts as 0/0 character devices when ``privileged``, else ``.wh.NAME`` files;
    opaque directories by ``trusted.overlay.opaque`` when ``privileged``, else by marker.

    Removing a whiteout removes either form, so an upper directory written by another
    overlay implementation (or by this one with other rights) is handled too."""

    def __init__(self, privileged: bool) -> None:
        self.privileged = privileged
        self.own_xattrs = frozenset({OPAQUE_XATTR}) if privileged else frozenset()

    def whiteout(self, dir_path: bytes, name: bytes) -> None:
        if self.privileged:
            os.mknod(join(dir_path, name), stat.S_IFCHR | 0o000, os.makedev(0, 0))
        else:
            super().whiteout(dir_path, name)

    def unwhiteout(self, dir_path: bytes, name: bytes) -> None:
        path = join(dir_path, name)
        if is_whiteout_device(path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        if len(WHITEOUT + name) <= 255:
            super().unwhiteout(dir_path, name)

    def mark_opaque(self, dir_path: bytes) -> None:
        if self.privileged:
            os.setxattr(dir_path, OPAQUE_XATTR, b"y", follow_symlinks=False)
        else:
            super().mark_opaque(dir_path)
