"""The writable pyfuse3 file system: FUSE requests translated into union engine calls.

``fsnap.mount.union.Union`` holds the merged tree and does every change (copy-up,
whiteouts, renames, hard links, the setgid policy), raising ``OSError``; this class turns a
request into one engine call and its result (or errno) into the reply, in the spirit of
pyfuse3's ``passthroughfs`` example. Lookups, attributes, listings and xattr reads come
from the tree as in the read-only mount (``fsnap.mount.fs.TreeFS``); file handles are
descriptors (of the upper file, or of the lower content until a copy-up), so writes,
fsync and ftruncate use them directly.

pyfuse3 does not pass setxattr's XATTR_CREATE/REPLACE flags on. Both mounts that serve this
class (``fsnap mount``, ``fsnap-overlay``) pass ``default_permissions``: the kernel checks
modes itself and never sends FUSE_ACCESS, so there is no ``access`` here. Every handle a
read or write names was recorded by ``open``/``create`` (the kernel sends none after
``release``). The kernel may cache attributes for ``cache_timeout`` seconds only (1 s),
not a day: the tree changes.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Awaitable
from typing import TypeVar

import pyfuse3
import trio

from fsnap.archive.format import NAME_MAX, kind_of_mode
from fsnap.diff.scan import scan_snapshot
from fsnap.errors import FailedPrecondition
from fsnap.mount.fastpath import LEARNT
from fsnap.mount.fs import TreeFS, read_fd
from fsnap.mount.source import chain_layers
from fsnap.mount.tree import Layer, MergedTree, Node
from fsnap.mount.union import AttrChange, NewObject, Overrides, Union
from fsnap.mount.upper import Upper
from fsnap.snapshots.snapshotter import LocalSnapshotter  # loaded anyway (fsnap.snapshots)

_T = TypeVar("_T")

_STATVFS_FIELDS = (
    "f_bsize",
    "f_frsize",
    "f_blocks",
    "f_bfree",
    "f_bavail",
    "f_files",
    "f_ffree",
    "f_favail",
)


async def _engine(pending: Awaitable[_T]) -> _T:
    """The engine call's result, or its ``OSError`` as the FUSE error it names."""
    try:
        return await pending
    except OSError as exc:
        raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None


class WritableFS(TreeFS):
    """pyfuse3 operations over a ``Union`` engine (lower layers + upper directory)."""

    cache_timeout = 1.0

    def __init__(self, union: Union) -> None:
        super().__init__(union.tree)
        self.union = union
        # open file descriptor -> the node it reads and writes
        self._open: dict[int, Node] = {}

    def _caller(self, ctx: pyfuse3.RequestContext) -> tuple[int, int]:
        return self.ids.uid_in(ctx.uid), self.ids.gid_in(ctx.gid)

    # --- lookups ---------------------------------------------------------------------------

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if len(name) > NAME_MAX:
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
        return await super().lookup(parent_inode, name, ctx)

    # --- creating and removing -------------------------------------------------------------

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        node, fd = await _engine(
            self.union.create_file(parent_inode, name, mode, self._caller(ctx))
        )
        self._open[fd] = node
        return pyfuse3.FileInfo(fh=fd), self._attrs(node)

    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        new = NewObject(kind_of_mode(mode), mode, rdev=rdev)
        node = await _engine(self.union.make(parent_inode, name, new, self._caller(ctx)))
        return self._attrs(node)

    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        new = NewObject("dir", stat.S_IFDIR | mode)
        node = await _engine(self.union.make(parent_inode, name, new, self._caller(ctx)))
        return self._attrs(node)

    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        new = NewObject("symlink", 0o777, link=target)
        node = await _engine(self.union.make(parent_inode, name, new, self._caller(ctx)))
        return self._attrs(node)

    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node = await _engine(self.union.link(inode, new_parent_inode, new_name))
        return self._attrs(node)

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await _engine(self.union.unlink(parent_inode, name))

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await _engine(self.union.rmdir(parent_inode, name))

    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        await _engine(
            self.union.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)
        )

    # --- attributes ------------------------------------------------------------------------

    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        change = AttrChange(
            mode=attr.st_mode if fields.update_mode else None,
            uid=self.ids.uid_in(attr.st_uid) if fields.update_uid else None,
            gid=self.ids.gid_in(attr.st_gid) if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            atime=attr.st_atime_ns if fields.update_atime else None,
            mtime=attr.st_mtime_ns if fields.update_mtime else None,
        )
        fd = fh if fh is not None and fh in self._open else None
        node = await _engine(self.union.set_attrs(inode, change, fd))
        return self._attrs(node)

    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        await _engine(self.union.set_xattr(inode, name, value))

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await _engine(self.union.remove_xattr(inode, name))

    # --- files -----------------------------------------------------------------------------

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node, fd = await _engine(self.union.open(inode, flags))
        self._open[fd] = node
        return pyfuse3.FileInfo(fh=fd, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await read_fd(fh, off, size, self._open[fh].size)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await _engine(self.union.write(fh, self._open.get(fh), off, buf))

    async def flush(self, fh: int) -> None:
        """Data goes to the upper file at each write: nothing is buffered here."""

    async def fsync(self, fh: int, datasync: bool) -> None:
        await _engine(trio.to_thread.run_sync(os.fdatasync if datasync else os.fsync, fh))

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await _engine(self.union.fsync_dir(fh))

    async def release(self, fh: int) -> None:
        self._open.pop(fh, None)
        LEARNT.forget(fh)
        os.close(fh)

    # --- file system -----------------------------------------------------------------------

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        """The upper file system's numbers: that is where new data goes."""
        st = await _engine(self.union.statvfs())
        data = pyfuse3.StatvfsData()
        for name in _STATVFS_FIELDS:
            setattr(data, name, getattr(st, name))
        data.f_namemax = NAME_MAX
        return data


def writable_fs(
    snapshots: LocalSnapshotter, key: str, privileged: bool | None = None
) -> WritableFS:
    """The writable file system of active snapshot ``key``: its parents' layers below, its
    directory (scanned once, with its index overrides) on top. ``privileged`` (default:
    running as root) puts metadata on disk; otherwise what disk cannot hold is indexed."""
    chain = snapshots.chain(key)
    lowers = chain_layers(snapshots, chain[:-1])
    mounts = snapshots.mounts(key)
    if mounts.upper is None or mounts.work is None:
        raise FailedPrecondition(f"snapshot {key} is not active: it mounts read-only")
    snapshots.index.use_overrides(key)
    if privileged is None:
        privileged = os.geteuid() == 0
    upper = Upper(mounts.upper, mounts.work, privileged)
    upper.clear_work()
    overrides = {entry.path: entry for entry in snapshots.index.read(key)}
    top = Layer(mounts.upper, scan_snapshot(mounts.upper, overrides), key, upper=True)
    tree = MergedTree.build([*lowers, top])
    sink = Overrides(
        put=lambda entry: snapshots.index.put_override(key, entry),
        delete=lambda path, subtree: snapshots.index.delete_override(key, path, subtree),
    )
    return WritableFS(Union(tree, upper, sink))
