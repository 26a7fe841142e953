"""The writable pyfuse3 file system: a merged tree whose changes go to an active snapshot.

The read-only ``MergedFS`` serves lookups, attributes, listings and reads from the
in-memory tree; this subclass also changes that tree, and mirrors every change to the
snapshot's upper directory (``fsnap.mount.upper`` documents the on-disk format). The tree
stays the authority while mounted, so a request never scans a directory; disk work runs
in worker threads. Changes to the tree are serialised by one lock (they await disk work
halfway, and two of them must never interleave); reads, writes to open files and lookups
do not take it.

Choices worth knowing:

- Copy-up happens on the first change of a lower object (open for writing, setattr,
  link, rename, xattrs). A file open read-only before its copy-up keeps reading the lower
  content (as overlayfs without ``metacopy`` did).
- A renamed directory is copied up with its whole subtree, each directory made opaque.
- Nodes (inode numbers) live as long as the mount; removed names leave ``None`` in their
  directory's listing so readdir offsets handed out stay valid.
- ``RENAME_EXCHANGE`` swaps two copied-up objects in one ``renameat2``; sockets are
  created in the upper directory (``bind`` works) and left out by commits; setxattr's
  XATTR_CREATE/REPLACE flags are not passed on by pyfuse3.
- The kernel may cache attributes for ``cache_timeout`` seconds only (1 s), not a day.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import pyfuse3
import trio

from fsnap.archive.entry import Entry, Kind
from fsnap.archive.format import NAME_MAX, WHITEOUT, kind_of_mode
from fsnap.errors import FailedPrecondition
from fsnap.mount.fastpath import write_nowait
from fsnap.mount.fs import MergedFS
from fsnap.mount.source import chain_layers
from fsnap.mount.tree import Layer, MergedTree, Node
from fsnap.mount.upper import Upper, join

if TYPE_CHECKING:
    from fsnap.snapshots.snapshotter import LocalSnapshotter

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_RENAME_FLAGS = RENAME_NOREPLACE | RENAME_EXCHANGE  # RENAME_WHITEOUT is not for users
_T = TypeVar("_T")


class Overrides:
    """Where override entries go: two callables, so the file system needs no store."""

    def __init__(self, put: Callable[[Entry], None], delete: Callable[[str, bool], None]) -> None:
        self.put = put
        self.delete = delete


def _fail(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


async def _disk(func: Callable[..., _T], *args: Any) -> _T:
    """Run blocking disk work in a thread; an OSError becomes the FUSE error it names."""
    try:
        return await trio.to_thread.run_sync(func, *args)
    except OSError as exc:
        raise _fail(exc.errno or errno.EIO) from None


class WritableFS(MergedFS):
    """pyfuse3 operations over ``tree`` (lower layers + upper), writing to ``upper``.

    Each directory's ``Node.below`` (noted while the one tree was built) says whether
    removing a name must leave a whiteout (the name exists below) and whether a new
    directory must be opaque."""

    cache_timeout = 1.0
    # File handles are descriptors here (writes, fsync and ftruncate use them directly).
    lazy_open = False

    def __init__(self, tree: MergedTree, upper: Upper, overrides: Overrides) -> None:
        super().__init__(tree)
        self.upper = upper
        self.overrides = overrides
        self._lock = trio.Lock()
        # ino -> every (parent, name) of a non-directory with more than one name
        self._links: dict[int, list[tuple[Node, bytes]]] = {}
        # directory ino -> name -> its slot in ``names`` (built on a directory's first removal)
        self._slots: dict[int, dict[bytes, int]] = {}
        for parent in tree.nodes:
            if parent is not None and parent.children is not None:
                for name, child in parent.children.items():
                    if not child.is_dir and child.nlink > 1:
                        self._links.setdefault(child.ino, []).append((parent, name))

    # --- the tree ---------------------------------------------------------------------------

    def _path(self, node: Node) -> bytes:
        parts: list[bytes] = []
        root = self.tree.root
        while node is not root:
            parts.append(node.name)
            assert node.parent is not None
            node = node.parent
        return b"/".join(reversed(parts))

    def _links_of(self, node: Node) -> list[tuple[Node, bytes]]:
        found = self._links.get(node.ino)
        if found:
            return found
        if node.nlink <= 0:
            return []
        assert node.parent is not None
        return [(node.parent, node.name)]

    def _dir(self, inode: int) -> Node:
        node = self._node(inode)
        if node.children is None:
            raise _fail(errno.ENOTDIR)
        return node

    def _child(self, parent: Node, name: bytes) -> Node:
        assert parent.children is not None
        child = parent.children.get(name)
        if child is None:
            raise _fail(errno.ENAMETOOLONG if len(name) > NAME_MAX else errno.ENOENT)
        return child

    def _new_node(self, entry: Entry) -> Node:
        node = Node(entry, None, len(self.tree.layer_names) - 1)
        node.ino = len(self.tree.nodes)
        node.upper = True
        if node.is_dir:
            node.names = []
            node.nlink = 2
        else:
            node.nlink = 0  # _insert counts its first name
        self.tree.nodes.append(node)
        return node

    def _insert(self, parent: Node, name: bytes, node: Node) -> None:
        assert parent.children is not None and parent.names is not None
        parent.children[name] = node
        slots = self._slots.get(parent.ino)
        if slots is not None:
            slots[name] = len(parent.names)
        parent.names.append(name)
        if node.is_dir:
            parent.nlink += 1
            node.parent, node.name = parent, name
            return
        links = self._links_of(node)
        node.nlink += 1
        if not links:
            node.parent, node.name = parent, name
            return
        self._links[node.ino] = [*links, (parent, name)]

    def _drop(self, parent: Node, name: bytes) -> Node:
        assert parent.children is not None and parent.names is not None
        node = parent.children.pop(name)
        slots = self._slots.get(parent.ino)
        if slots is None:
            slots = {n: i for i, n in enumerate(parent.names) if n is not None}
            self._slots[parent.ino] = slots
        parent.names[slots.pop(name)] = None
        if node.is_dir:
            parent.nlink -= 1
            return node
        node.nlink -= 1
        links = [link for link in self._links_of(node) if link != (parent, name)]
        if len(links) > 1:
            self._links[node.ino] = links
        else:
            self._links.pop(node.ino, None)
        if links:
            node.parent, node.name = links[0]
        return node

    def _entry(self, node: Node, rel: bytes) -> Entry:
        xattrs = {os.fsdecode(k): v for k, v in (node.xattrs or {}).items()}
        kind = kind_of_mode(node.mode)
        return Entry(
            path=os.fsdecode(rel),
            kind=kind,
            mode=node.mode & 0o7777,
            uid=node.uid,
            gid=node.gid,
            size=node.size if kind == "file" else 0,
            mtime=node.mtime,
            link=os.fsdecode(node.link or b""),
            devmajor=os.major(node.rdev),
            devminor=os.minor(node.rdev),
            xattrs=xattrs,
            atime=node.atime,
        )

    def _lower_at(self, parent: Node, name: bytes) -> bool | None:
        """Whether the lower layers' ``parent/name`` (if it shows through) is a directory;
        None if nothing below shows there.

        ``parent.below`` describes the lower directory at ``parent``'s path when the mount
        started. That is still its path unless it or an ancestor was renamed, and a renamed
        directory is materialized opaque, which the walk up stops at first."""
        node = parent
        while True:
            if node.opaque:
                return None
            if node is self.tree.root:
                break
            assert node.parent is not None
            node = node.parent
        return (parent.below or {}).get(name)

    def _subtree(self, top: Node) -> Iterator[Node]:
        stack = [top]
        while stack:
            node = stack.pop()
            yield node
            for child in (node.children or {}).values():
                if child.is_dir:
                    stack.append(child)
                else:
                    yield child

    # --- copy-up ------------------------------------------------------------------------------

    async def _up_dir(self, node: Node) -> None:
        """Make directory ``node`` (and its ancestors) exist in the upper directory."""
        if node.upper:
            return
        if node is self.tree.root:
            await _disk(self.upper.set_root, self._entry(node, b""))
            node.upper = True
            await self._sync(node, force=True)
            return
        assert node.parent is not None
        await self._up_dir(node.parent)
        rel = self._path(node)
        await _disk(self.upper.copy_up, rel, self._entry(node, rel))
        node.upper = True
        await self._sync(node)

    async def _up(self, node: Node, data: bool = True) -> None:
        """Copy ``node`` up (content through ``work/``), and link its other names to it."""
        if node.upper:
            return
        if node.is_dir:
            await self._up_dir(node)
            return
        links = self._links_of(node)
        if not links:
            raise _fail(errno.ENOENT)
        for parent, _ in links:
            await self._up_dir(parent)
        first = join(self._path(links[0][0]), links[0][1])
        source = node.source if data else None
        await _disk(self.upper.copy_up, first, self._entry(node, first), source)
        for parent, name in links[1:]:
            await _disk(self.upper.link_up, first, join(self._path(parent), name))
        node.upper = True
        node.source = None
        if not data:
            node.size = 0
        await self._sync(node)

    async def _materialize(self, top: Node) -> None:
        """Copy up a directory with everything below it, each directory opaque: the
        lower layers no longer matter to it, so it can move anywhere."""
        for node in list(self._subtree(top)):
            await self._up(node)
            if node.is_dir and not node.opaque:
                await _disk(self.upper.mark_opaque, self._path(node))
                node.opaque = True

    async def _sync(self, node: Node, force: bool = False) -> None:
        """Keep ``node``'s override entries (one per name) in step with its metadata."""
        if self.upper.privileged and not force:
            return
        if node is self.tree.root:
            paths = [b""]
        else:
            paths = [join(self._path(p), n) for p, n in self._links_of(node)]
        for rel in paths:
            entry = self._entry(node, rel)
            if force or self.upper.needs_override(entry):
                await _disk(self.overrides.put, entry)
            else:
                await _disk(self.overrides.delete, entry.path, False)

    async def _sync_tree(self, top: Node) -> None:
        if not self.upper.privileged:
            for node in list(self._subtree(top)):
                await self._sync(node)

    async def _refresh(self, node: Node) -> None:
        """Size and times come from disk (after the disk changed them)."""
        if node.nlink == 0 and not node.is_dir:
            return
        rel = b"" if node is self.tree.root else self._path(node)
        if node is self.tree.root and not node.upper:
            return
        st = await _disk(self.upper.lstat, rel)
        node.mtime, node.atime = st.st_mtime_ns, st.st_atime_ns
        if stat.S_ISREG(st.st_mode) and stat.S_ISREG(node.mode):
            node.size = st.st_size

    # --- names ----------------------------------------------------------------------------------

    @staticmethod
    def _check_new_name(name: bytes) -> None:
        if len(name) > NAME_MAX:
            raise _fail(errno.ENAMETOOLONG)
        if name.startswith(WHITEOUT):
            raise _fail(errno.EINVAL)

    async def _make_room(self, parent: Node, name: bytes) -> None:
        """``parent`` is in the upper directory and no whiteout hides ``name`` there."""
        assert parent.children is not None
        if name in parent.children:
            raise _fail(errno.EEXIST)
        await self._up_dir(parent)
        await _disk(self.upper.unwhiteout, self._path(parent), name)

    def _owner(self, parent: Node, ctx: pyfuse3.RequestContext, mode: int) -> tuple[int, int, int]:
        """uid, gid and permission bits of a new node (BSD group of a setgid directory)."""
        gid = self.ids.gid_in(ctx.gid)
        perms = mode & 0o7777
        if parent.mode & stat.S_ISGID:
            gid = parent.gid
            if stat.S_ISDIR(mode):
                perms |= stat.S_ISGID
        return self.ids.uid_in(ctx.uid), gid, perms

    async def _create_node(
        self,
        parent_inode: int,
        name: bytes,
        kind: Kind,
        mode: int,
        ctx: pyfuse3.RequestContext,
        link: bytes = b"",
        rdev: int = 0,
    ) -> Node:
        parent = self._dir(parent_inode)
        self._check_new_name(name)
        await self._make_room(parent, name)
        uid, gid, perms = self._owner(parent, ctx, mode)
        rel = join(self._path(parent), name)
        entry = Entry(
            path=os.fsdecode(rel),
            kind=kind,
            mode=perms,
            uid=uid,
            gid=gid,
            mtime=time.time_ns(),
            link=os.fsdecode(link),
            devmajor=os.major(rdev),
            devminor=os.minor(rdev),
        )
        opaque = kind == "dir" and bool(self._lower_at(parent, name))
        await _disk(self.upper.place, rel, entry, None, opaque)
        node = self._new_node(entry)
        node.opaque = opaque
        self._insert(parent, name, node)
        await self._refresh(node)
        await self._refresh(parent)
        await self._sync(node)
        return node

    # --- lookups ------------------------------------------------------------------------------

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if len(name) > NAME_MAX:
            raise _fail(errno.ENAMETOOLONG)
        return await super().lookup(parent_inode, name, ctx)

    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        self._node(inode)
        return True

    # --- creating -------------------------------------------------------------------------------

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        async with self._lock:
            node = await self._create_node(parent_inode, name, "file", mode, ctx)
            fd = await _disk(self.upper.open, self._path(node), os.O_RDWR)
        self._open[fd] = node
        return pyfuse3.FileInfo(fh=fd), self._attrs(node)

    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        async with self._lock:
            node = await self._create_node(
                parent_inode, name, kind_of_mode(mode), mode, ctx, rdev=rdev
            )
        return self._attrs(node)

    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        async with self._lock:
            node = await self._create_node(parent_inode, name, "dir", stat.S_IFDIR | mode, ctx)
        return self._attrs(node)

    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        async with self._lock:
            node = await self._create_node(parent_inode, name, "symlink", 0o777, ctx, link=target)
        return self._attrs(node)

    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        async with self._lock:
            node = self._node(inode)
            if node.is_dir:
                raise _fail(errno.EPERM)
            parent = self._dir(new_parent_inode)
            self._check_new_name(new_name)
            await self._make_room(parent, new_name)
            await self._up(node)
            rel = join(self._path(parent), new_name)
            await _disk(self.upper.link, self._path(node), rel)
            self._insert(parent, new_name, node)
            await self._refresh(parent)
            await self._sync(node)
        return self._attrs(node)

    # --- removing ------------------------------------------------------------------------------

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        async with self._lock:
            parent = self._dir(parent_inode)
            node = self._child(parent, name)
            if node.is_dir:
                raise _fail(errno.EISDIR)
            await self._remove(parent, name, node)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        async with self._lock:
            parent = self._dir(parent_inode)
            node = self._child(parent, name)
            if not node.is_dir:
                raise _fail(errno.ENOTDIR)
            if node.children:
                raise _fail(errno.ENOTEMPTY)
            await self._remove(parent, name, node)

    async def _remove(self, parent: Node, name: bytes, node: Node) -> None:
        await self._up_dir(parent)
        parent_rel = self._path(parent)
        rel = join(parent_rel, name)
        whiteout = (parent_rel, name) if self._lower_at(parent, name) is not None else None
        await _disk(self.upper.remove, rel if node.upper else None, whiteout)
        if not self.upper.privileged and node.upper:
            await _disk(self.overrides.delete, os.fsdecode(rel), node.is_dir)
        self._drop(parent, name)
        await self._refresh(parent)

    # --- renaming -------------------------------------------------------------------------------

    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        if (flags & RENAME_EXCHANGE and flags & RENAME_NOREPLACE) or flags & ~_RENAME_FLAGS:
            raise _fail(errno.EINVAL)
        async with self._lock:
            old_parent = self._dir(parent_inode_old)
            new_parent = self._dir(parent_inode_new)
            node = self._child(old_parent, name_old)
            self._check_new_name(name_new)
            assert new_parent.children is not None
            target = new_parent.children.get(name_new)
            if flags & RENAME_EXCHANGE:
                if target is None:
                    raise _fail(errno.ENOENT)
                if target is not node:
                    self._check_inside(node, new_parent)
                    self._check_inside(target, old_parent)
                    await self._exchange(old_parent, name_old, new_parent, name_new, node, target)
                return
            if target is node:
                return
            self._check_rename(node, new_parent, target, flags)
            await self._move(old_parent, name_old, new_parent, name_new, node, target)

    def _check_inside(self, node: Node, new_parent: Node) -> None:
        """A directory cannot move below itself (EINVAL)."""
        if node.is_dir:
            above: Node | None = new_parent
            while above is not None and above is not self.tree.root:
                if above is node:
                    raise _fail(errno.EINVAL)
                above = above.parent

    async def _exchange(
        self,
        old_parent: Node,
        name_old: bytes,
        new_parent: Node,
        name_new: bytes,
        node: Node,
        target: Node,
    ) -> None:
        """``RENAME_EXCHANGE``: both objects are copied up (directories with all they
        hold, made opaque: they may land where other lower directories are), then swapped
        in the upper directory in one ``renameat2``; neither name needs a whiteout, since
        both stay in use."""
        await self._up_movable(target)
        old_rel, new_rel = await self._up_move(old_parent, name_old, new_parent, name_new, node)
        await _disk(self.upper.exchange, old_rel, new_rel)
        if not self.upper.privileged:
            await _disk(self.overrides.delete, os.fsdecode(old_rel), node.is_dir)
            await _disk(self.overrides.delete, os.fsdecode(new_rel), target.is_dir)
        self._drop(new_parent, name_new)
        self._drop(old_parent, name_old)
        self._insert(new_parent, name_new, node)
        self._insert(old_parent, name_old, target)
        await self._refresh(old_parent)
        await self._refresh(new_parent)
        await self._sync_tree(node)
        await self._sync_tree(target)

    def _check_rename(self, node: Node, new_parent: Node, target: Node | None, flags: int) -> None:
        if target is not None:
            if flags & RENAME_NOREPLACE:
                raise _fail(errno.EEXIST)
            if node.is_dir and not target.is_dir:
                raise _fail(errno.ENOTDIR)
            if not node.is_dir and target.is_dir:
                raise _fail(errno.EISDIR)
            if target.children:
                raise _fail(errno.ENOTEMPTY)
        self._check_inside(node, new_parent)

    async def _up_movable(self, node: Node) -> None:
        """Copy ``node`` up so that it can move (a directory with all it holds, opaque)."""
        if node.is_dir:
            await self._materialize(node)
        else:
            await self._up(node)

    async def _up_move(
        self, old_parent: Node, name_old: bytes, new_parent: Node, name_new: bytes, node: Node
    ) -> tuple[bytes, bytes]:
        """Copy up what a move of ``node`` needs; its old and new upper paths."""
        await self._up_movable(node)
        await self._up_dir(new_parent)
        await self._up_dir(old_parent)
        return join(self._path(old_parent), name_old), join(self._path(new_parent), name_new)

    async def _move(
        self,
        old_parent: Node,
        name_old: bytes,
        new_parent: Node,
        name_new: bytes,
        node: Node,
        target: Node | None,
    ) -> None:
        old_rel, new_rel = await self._up_move(old_parent, name_old, new_parent, name_new, node)
        below = self._lower_at(old_parent, name_old) is not None
        whiteout = (self._path(old_parent), name_old) if below else None
        clear = target is not None and target.is_dir and target.upper
        await _disk(self.upper.rename, old_rel, new_rel, clear, whiteout)
        if not self.upper.privileged:
            await _disk(self.overrides.delete, os.fsdecode(old_rel), node.is_dir)
            if target is not None:
                await _disk(self.overrides.delete, os.fsdecode(new_rel), target.is_dir)
        if target is not None:
            self._drop(new_parent, name_new)
        self._drop(old_parent, name_old)
        self._insert(new_parent, name_new, node)
        await self._refresh(old_parent)
        await self._refresh(new_parent)
        await self._sync_tree(node)

    # --- attributes ------------------------------------------------------------------------------

    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        async with self._lock:
            node = self._node(inode)
            truncate = fields.update_size
            if not node.upper:
                await self._up(node, data=not (truncate and attr.st_size == 0))
            if node.nlink == 0 and not node.is_dir:
                return await self._setattr_unlinked(node, attr, fields, fh)
            rel = b"" if node is self.tree.root else self._path(node)
            if fields.update_mode:
                node.mode = stat.S_IFMT(node.mode) | (attr.st_mode & 0o7777)
            if fields.update_uid:
                node.uid = self.ids.uid_in(attr.st_uid)
            if fields.update_gid:
                node.gid = self.ids.gid_in(attr.st_gid)
            if fields.update_mode or fields.update_uid or fields.update_gid:
                await _disk(self.upper.apply_at, rel, self._entry(node, rel), False)
                await self._sync(node, force=node is self.tree.root)
            if truncate:
                await _disk(self.upper.truncate, rel, attr.st_size)
            if fields.update_atime or fields.update_mtime:
                await _disk(
                    self.upper.set_times,
                    rel,
                    attr.st_atime_ns if fields.update_atime else None,
                    attr.st_mtime_ns if fields.update_mtime else None,
                )
            await self._refresh(node)
        return self._attrs(node)

    async def _setattr_unlinked(
        self,
        node: Node,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
    ) -> pyfuse3.EntryAttributes:
        """An open file with no name left: only its descriptor reaches it."""
        if fh is None or fh not in self._open:
            raise _fail(errno.ESTALE)
        if fields.update_size:
            await _disk(os.ftruncate, fh, attr.st_size)
            node.size = attr.st_size
        if fields.update_mode:
            node.mode = stat.S_IFMT(node.mode) | (attr.st_mode & 0o7777)
        return self._attrs(node)

    # --- files --------------------------------------------------------------------------------

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._node(inode)
        writing = flags & (os.O_WRONLY | os.O_RDWR)
        truncate = flags & os.O_TRUNC
        if writing or truncate:
            async with self._lock:
                await self._up(node, data=not truncate)
        if not node.upper or node.nlink == 0:
            return await super().open(inode, flags & ~(os.O_TRUNC | os.O_APPEND | os.O_CREAT), ctx)
        access = os.O_RDWR if writing else os.O_RDONLY
        fd = await _disk(self.upper.open, self._path(node), access | (flags & os.O_TRUNC))
        if truncate:
            node.size = 0
            await self._refresh(node)
        self._open[fd] = node
        return pyfuse3.FileInfo(fh=fd, keep_cache=True)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        """Into the page cache on the loop when that cannot block (RWF_NOWAIT, where the
        file system takes it), else in a worker thread; size and mtime then come from the
        file."""
        written = write_nowait(fh, buf, off)
        if written < len(buf):
            view = memoryview(buf)[written:]
            written += await _disk(os.pwrite, fh, view, off + written)
        node = self._open.get(fh)
        if node is not None:
            st = os.fstat(fh)
            node.size, node.mtime = st.st_size, st.st_mtime_ns
        return written

    async def flush(self, fh: int) -> None:
        """Data goes to the upper file at each write: nothing is buffered here."""

    async def fsync(self, fh: int, datasync: bool) -> None:
        await _disk(os.fdatasync if datasync else os.fsync, fh)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        node = self._node(fh)
        if node.upper or node is self.tree.root:
            rel = b"" if node is self.tree.root else self._path(node)
            await _disk(self.upper.fsync_dir, rel)

    # --- extended attributes -----------------------------------------------------------------

    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        await self._change_xattr(inode, name, value)

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        if name not in (self._node(inode).xattrs or {}):
            raise _fail(pyfuse3.ENOATTR)
        await self._change_xattr(inode, name, None)

    async def _change_xattr(self, inode: int, name: bytes, value: bytes | None) -> None:
        async with self._lock:
            node = self._node(inode)
            await self._up(node)
            xattrs = dict(node.xattrs or {})
            if value is None:
                if xattrs.pop(name, None) is None:
                    raise _fail(pyfuse3.ENOATTR)
            else:
                xattrs[name] = value
            rel = b"" if node is self.tree.root else self._path(node)
            if self.upper.privileged:
                await _disk(self.upper.set_xattr, rel, name, value)
            node.xattrs = xattrs or None
            await self._sync(node, force=node is self.tree.root)

    # --- file system ------------------------------------------------------------------------------

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        """The upper file system's numbers: that is where new data goes."""
        st = await _disk(os.statvfs, self.upper.fs)
        data = pyfuse3.StatvfsData()
        for name in (
            "f_bsize",
            "f_frsize",
            "f_blocks",
            "f_bfree",
            "f_bavail",
            "f_files",
            "f_ffree",
            "f_favail",
        ):
            setattr(data, name, getattr(st, name))
        data.f_namemax = NAME_MAX
        return data


def writable_fs(
    snapshots: LocalSnapshotter, key: str, privileged: bool | None = None
) -> WritableFS:
    """The writable file system of active snapshot ``key``: its parents' layers below, its
    directory (scanned once, with its index overrides) on top. ``privileged`` (default:
    running as root) puts metadata on disk; otherwise what disk cannot hold is indexed."""
    from fsnap.diff.scan import scan_snapshot

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
    return WritableFS(tree, upper, sink)
