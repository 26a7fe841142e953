"""A FUSE file system whose every write fails (EIO), served with the kernel's writeback
cache: a ``write(2)`` lands in the page cache and succeeds, its write-back fails later, and
the kernel records that as the file system's writeback error, the one ``syncfs(2)``
reports. It holds one empty regular file, ``f``. Run as a program: ``eio_fs.py MOUNTPOINT``
serves until the mount point is unmounted (``fusermount3 -u``)."""

from __future__ import annotations

import errno
import os
import stat
import sys

import pyfuse3
import trio

FILE = pyfuse3.ROOT_INODE + 1


class EioFS(pyfuse3.Operations):
    enable_writeback_cache = True

    def _attrs(self, inode: int) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = inode
        is_root = inode == pyfuse3.ROOT_INODE
        attrs.st_mode = (stat.S_IFDIR | 0o755) if is_root else (stat.S_IFREG | 0o644)
        attrs.st_nlink = 2 if is_root else 1
        attrs.st_uid, attrs.st_gid = os.getuid(), os.getgid()
        attrs.entry_timeout = attrs.attr_timeout = 3600
        return attrs

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attrs(inode)

    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        return self._attrs(inode)

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if parent_inode != pyfuse3.ROOT_INODE or name != b"f":
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(FILE)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        if start_id == 0:
            pyfuse3.readdir_reply(token, b"f", self._attrs(FILE), 1)

    async def releasedir(self, fh: int) -> None:
        pass

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        return pyfuse3.FileInfo(fh=inode)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return b""

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        raise pyfuse3.FUSEError(errno.EIO)

    async def flush(self, fh: int) -> None:
        pass

    async def release(self, fh: int) -> None:
        pass


def main() -> None:
    pyfuse3.init(EioFS(), sys.argv[1], {"fsname=eio", "default_permissions"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)


if __name__ == "__main__":
    main()
