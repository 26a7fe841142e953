"""The pyfuse3 file systems over a ``MergedTree``: what both mounts serve from the tree
(``TreeFS``: lookups, attributes, listings, xattr reads), and the read-only mount
(``MergedFS``). The writable mount (``fsnap.mount.rwfs``) builds on ``TreeFS`` too.

Inode numbers are the tree's (fixed for the mount's life), so there is no lookup-count
bookkeeping to do: ``forget`` has nothing to free. Everything the kernel may cache, a
read-only mount lets it cache for long: the layers under it never change.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import pyfuse3

from fsnap.archive.format import NAME_MAX
from fsnap.mount.fastpath import open_source, read_nowait
from fsnap.mount.idshift import NO_SHIFT
from fsnap.mount.tree import MergedTree, Node
from fsnap.mount.worker import run_blocking

if TYPE_CHECKING:
    from fsnap.lazy.fetch import LazyFiles

# The layers are immutable: let the kernel keep entries and attributes (practically) forever.
CACHE_TIMEOUT = 86400.0
# What stat tells readers to use as a buffer size: large reads mean fewer FUSE round trips.
BLOCK_SIZE = 128 * 1024
# Attributes a read-only mount keeps built (``MergedFS._attrs``): room for every entry of a
# 10,000-entry image, about 4 MB; a walk over a larger one empties it when full, so the
# memory stays bounded (a 500,000-entry tree is not held twice).
ATTR_CACHE = 16384
# Lazily opened files get handles from here up, above any file descriptor number.
LAZY_HANDLES = 1 << 32
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT
# ``fsnap mount --provenance``: "<layer index> <chain ID>" of the layer an entry comes from.
PROVENANCE_XATTR = b"user.fsnap.layer"


class _LazyFile:
    """A read-only open whose descriptor waits for the first read. Files the kernel still
    has in its page cache (``keep_cache``) are then never opened by the daemon at all."""

    __slots__ = ("node", "fd")

    def __init__(self, node: Node) -> None:
        self.node = node
        self.fd = -1


def _reply(buf: bytearray, got: int) -> bytes:
    """The first ``got`` bytes of ``buf`` as a read reply. pyfuse3 replies from any
    contiguous buffer, so a view spares copying up to ``max_read`` bytes (its stub says
    ``bytes``, hence the cast)."""
    return cast(bytes, buf if got == len(buf) else memoryview(buf)[:got])


async def read_fd(fd: int, off: int, size: int, file_size: int) -> bytes:
    """Read from an open descriptor (the writable mount's reads): on the loop if the page
    cache has it all, else the rest (into the same buffer, no copies) in a worker thread
    (also on file systems that refuse the page-cache-only read, see ``fastpath``)."""
    buf = bytearray(size)
    try:
        got = read_nowait(fd, buf, off)
    except OSError as exc:
        raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
    if got < size and off + got < file_size:
        rest, rest_off = memoryview(buf)[got:], off + got
        try:
            got += await run_blocking(lambda: os.preadv(fd, [rest], rest_off))
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
    return _reply(buf, got)


def _erofs() -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(errno.EROFS)


class TreeFS(pyfuse3.Operations):
    """The pyfuse3 operations both mounts serve straight from the merged tree: lookups,
    attributes, listings, symlinks and xattr reads. A subclass says how long the kernel
    may cache what it gets (``cache_timeout``) and serves files and changes."""

    # pyfuse3.main's (min_tasks, max_tasks): requests served at once. Handlers that wait
    # (worker threads, lazy fetches) need several; see MergedFS.serving_tasks.
    TASKS = (2, 16)

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False
    # How long the kernel may trust an entry or attribute it got from us.
    cache_timeout: float

    def __init__(self, tree: MergedTree) -> None:
        super().__init__()
        self.tree = tree
        # Owner 0 shown as the mounting user (a rootless container's root), see idshift.
        self.ids = NO_SHIFT
        self.provenance = False
        # Lazy layers (fsnap.lazy): their files are fetched before they are first opened,
        # and (``lazy_background``) the layers completed in the background.
        self.lazy_files: LazyFiles | None = None
        self.lazy_background = True

    async def background(self) -> None:
        """What runs beside the request handlers for the mount's life (the serving nursery
        starts it and cancels it at unmount): recording what reads fetched of lazy layers
        and completing them (``fsnap.lazy.fetch``), if the mount has any."""
        if self.lazy_files is not None:
            await self.lazy_files.run(complete=self.lazy_background)

    def serving_tasks(self) -> tuple[int, int]:
        """pyfuse3.main's ``(min_tasks, max_tasks)`` for this file system."""
        return self.TASKS

    # --- inode lookups -------------------------------------------------------------

    def _node(self, inode: int) -> Node:
        try:
            node = self.tree.nodes[inode]
        except IndexError:
            node = None
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = node.ino
        attrs.st_mode = node.mode
        attrs.st_nlink = node.nlink
        attrs.st_uid = self.ids.uid_out(node.uid)
        attrs.st_gid = self.ids.gid_out(node.gid)
        attrs.st_rdev = node.rdev
        attrs.st_size = node.size
        attrs.st_blksize = BLOCK_SIZE
        attrs.st_blocks = (node.size + 511) // 512
        attrs.st_atime_ns = node.atime
        attrs.st_mtime_ns = node.mtime
        attrs.st_ctime_ns = node.mtime
        attrs.entry_timeout = self.cache_timeout
        attrs.attr_timeout = self.cache_timeout
        return attrs

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        if parent.children is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if name == b".":
            child: Node | None = parent
        elif name == b"..":
            child = parent.parent
        else:
            child = parent.children.get(name)
        if child is None:
            # A negative entry the kernel may cache too: programs probe many absent paths.
            negative = pyfuse3.EntryAttributes()
            negative.st_ino = 0
            negative.entry_timeout = self.cache_timeout
            return negative
        return self._attrs(child)

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attrs(self._node(inode))

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        """Nodes live as long as the mount: nothing to free."""

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = self._node(inode)
        if node.link is None:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return node.link

    # --- directories -----------------------------------------------------------------

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self._node(inode)
        if node.children is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """Offsets 1 and 2 follow "." and ".."; offset ``i + 3`` follows ``names[i]``.

        The names list is frozen for the mount's life, so an offset handed out once stays
        valid (seekdir/telldir, a listing resumed across several readdir calls)."""
        node = self._node(fh)
        assert node.names is not None
        assert node.children is not None
        if start_id == 0:
            if not pyfuse3.readdir_reply(token, b".", self._attrs(node), 1):
                return
            start_id = 1
        if start_id == 1:
            assert node.parent is not None
            if not pyfuse3.readdir_reply(token, b"..", self._attrs(node.parent), 2):
                return
            start_id = 2
        names = node.names
        children = node.children
        for index in range(start_id - 2, len(names)):
            name = names[index]
            if name is None:
                continue  # a name removed by a writable mount: its slot keeps offsets stable
            if not pyfuse3.readdir_reply(token, name, self._attrs(children[name]), index + 3):
                return

    async def releasedir(self, fh: int) -> None:
        """Directory handles are inode numbers: nothing to release."""

    # --- extended attributes -----------------------------------------------------------

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        names = list(self._node(inode).xattrs or ())
        return [*names, PROVENANCE_XATTR] if self.provenance else names

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if self.provenance and name == PROVENANCE_XATTR:
            return self._provenance(self._node(inode))
        xattrs = self._node(inode).xattrs
        if not xattrs or name not in xattrs:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return xattrs[name]

    def _provenance(self, node: Node) -> bytes:
        names = self.tree.layer_names
        name = names[node.layer] if 0 <= node.layer < len(names) else ""
        return f"{node.layer} {name}".encode()


class MergedFS(TreeFS):
    """Read-only pyfuse3 operations over one merged tree; files open lazily (at their
    first read).

    Without lazy layers no handler ever awaits: opens and reads are system calls made on
    the trio loop, a read that misses the page cache waits for the disk there, and the
    server runs one pyfuse3 task (``serving_tasks``). That is fuse-overlayfs's model too
    (one thread, blocking I/O). Measured (docs/benchmarks.md, "The pyfuse3 floor"):
    handing cold reads to a worker thread and warming the next files of a directory in
    another cost more CPU than they saved (cold ``tar``: daemon CPU 4.7 -> 2.9 s, within
    12 % of a minimal pyfuse3 server), and on a loaded machine each hand-off also waits to
    be scheduled. A slow lower file system (NFS) now holds up the mount's other requests
    while it answers, as it does fuse-overlayfs's. With one task, the server also waits for
    each request by blocking, not through trio (``fsnap.mount.loop``)."""

    cache_timeout = CACHE_TIMEOUT

    def __init__(self, tree: MergedTree, provenance: bool = False) -> None:
        super().__init__(tree)
        # Off by default: the default mount shows exactly the image's own xattrs.
        self.provenance = provenance
        # lazily opened file handle -> its node and (once read) descriptor
        self._lazy: dict[int, _LazyFile] = {}
        self._last_handle = LAZY_HANDLES
        self._built: dict[int, pyfuse3.EntryAttributes] = {}  # inode -> its attributes

    def _attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        """A node's attributes, built once while cached: the nodes of a read-only mount
        never change, and building the object costs more than the rest of a listing's
        entry (a ``readdir`` answers every entry with its attributes). At most
        ``ATTR_CACHE`` are kept; the cache is emptied when full."""
        built = self._built.get(node.ino)
        if built is None:
            if len(self._built) >= ATTR_CACHE:
                self._built.clear()
            built = self._built[node.ino] = super()._attrs(node)
        return built

    def serving_tasks(self) -> tuple[int, int]:
        """One task unless lazy layers make handlers wait for the network: several tasks
        only add a lock hand-off per request when nothing ever awaits."""
        return (1, 1) if self.lazy_files is None else self.TASKS

    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        """``default_permissions`` makes the kernel check modes; only writes are refused."""
        self._node(inode)
        if mode & os.W_OK:
            raise _erofs()
        return True

    # --- files -------------------------------------------------------------------------

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & _WRITE_FLAGS:
            raise _erofs()
        node = self._node(inode)
        if node.source is None:
            raise pyfuse3.FUSEError(errno.EIO if stat.S_ISREG(node.mode) else errno.EINVAL)
        if self.lazy_files is not None:
            try:  # its first chunk now (a one-chunk file: all of it); the rest as read
                await self.lazy_files.ensure_readable(node.source, 0, 1)
            except OSError as exc:
                raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        self._last_handle += 1
        self._lazy[self._last_handle] = _LazyFile(node)
        return pyfuse3.FileInfo(fh=self._last_handle, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        """Open the lower file at the handle's first read, then read, both on the loop
        (see the class docstring). A lazy layer's file has the chunks this read covers
        fetched first."""
        lazy = self._lazy[fh]
        source = lazy.node.source
        assert source is not None
        if self.lazy_files is not None and self.lazy_files.pending(source):
            try:
                await self.lazy_files.ensure_readable(source, off, off + size)
            except OSError as exc:
                raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
            if fh not in self._lazy:  # released meanwhile: nothing to open for
                raise pyfuse3.FUSEError(errno.EBADF)
        buf = bytearray(size)
        try:
            if lazy.fd < 0:
                lazy.fd = open_source(source)
            got = os.preadv(lazy.fd, [buf], off)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        return _reply(buf, got)

    async def release(self, fh: int) -> None:
        lazy = self._lazy.pop(fh)
        if lazy.fd >= 0:
            os.close(lazy.fd)

    # --- file system -------------------------------------------------------------------

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = BLOCK_SIZE
        data.f_frsize = 4096
        data.f_blocks = (self.tree.total_size + 4095) // 4096
        data.f_bfree = 0
        data.f_bavail = 0
        data.f_files = len(self.tree.nodes) - 1
        data.f_ffree = 0
        data.f_favail = 0
        data.f_namemax = NAME_MAX
        return data

    # --- everything that writes: a read-only file system -------------------------------

    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        raise _erofs()

    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise _erofs()

    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise _erofs()

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise _erofs()

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise _erofs()

    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise _erofs()

    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        raise _erofs()

    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise _erofs()

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        raise _erofs()

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        raise _erofs()

    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        raise _erofs()

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise _erofs()
