"""The union engine of a writable mount: a merged tree and every change to it, no FUSE.

``MergedTree`` (``fsnap.mount.tree``) is the merged view of the lower layers and of the
upper layer as the mount found it; ``Union`` changes that tree and mirrors every change to
the upper directory (``fsnap.mount.upper`` documents the on-disk format). The tree stays the
authority while mounted, so an operation never scans a directory; disk work runs in worker
threads. Changes are serialised by one lock (they await disk work halfway, and two of them
must never interleave); lookups and reads of the tree do not take it: the tree changes only
between two awaits, so a reader on the event loop sees an operation's change whole or not
at all.

Operations take inode numbers and names as a kernel request carries them and raise
``OSError`` with the errno a caller must see; ``fsnap.mount.rwfs`` translates FUSE requests
into them, and ``tests/test_union.py`` drives them directly under ``trio.run``.

Choices worth knowing:

- Copy-up happens on the first change of a lower object (open for writing, setattr,
  link, rename, xattrs). A file open read-only before its copy-up keeps reading the lower
  content (as overlayfs without ``metacopy`` did).
- A renamed directory is copied up with its whole subtree, each directory made opaque.
- Nodes (inode numbers) live as long as the mount; removed names leave ``None`` in their
  directory's listing so readdir offsets handed out stay valid.
- ``RENAME_EXCHANGE`` swaps two copied-up objects in one ``renameat2``; sockets are
  created in the upper directory (``bind`` works) and left out by commits.
- A new object's group is the caller's, or the directory's when that directory is setgid
  (BSD semantics, as Linux gives them); a new directory inherits the setgid bit.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from fsnap.archive.entry import Entry, Kind
from fsnap.archive.format import NAME_MAX, OVERLAY_XATTR_PREFIXES, WHITEOUT, kind_of_mode
from fsnap.mount.fastpath import open_source, write_nowait
from fsnap.mount.tree import MergedTree, Node, UpperMarks
from fsnap.mount.upper import Upper, join

if TYPE_CHECKING:
    from fsnap.lazy.fetch import LazyFiles

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_OVERLAY_XATTRS = tuple(os.fsencode(p) for p in OVERLAY_XATTR_PREFIXES)
_RENAME_FLAGS = RENAME_NOREPLACE | RENAME_EXCHANGE  # RENAME_WHITEOUT is not for users
_T = TypeVar("_T")


class Overrides:
    """Where override entries go: two callables, so the engine needs no store."""

    def __init__(self, put: Callable[[Entry], None], delete: Callable[[str, bool], None]) -> None:
        self.put = put
        self.delete = delete


@dataclass(frozen=True, slots=True)
class NewObject:
    """What a create makes: ``kind``, ``mode`` (permission bits, with or without the
    type's), a symlink's target ``link``, a device's ``rdev``."""

    kind: Kind
    mode: int
    link: bytes = b""
    rdev: int = 0


@dataclass(slots=True)
class AttrChange:
    """What one setattr changes (None: that attribute stays). Owners are the tree's (ids
    already shifted back); times in nanoseconds."""

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime: int | None = None
    mtime: int | None = None


@dataclass(frozen=True, slots=True)
class _Move:
    """One rename's operands: ``node``, named ``name_old`` in ``old_parent``, is to be
    named ``name_new`` in ``new_parent``."""

    old_parent: Node
    name_old: bytes
    new_parent: Node
    name_new: bytes
    node: Node


def _fail(code: int) -> OSError:
    return OSError(code, os.strerror(code))


async def _disk(func: Callable[..., _T], *args: Any) -> _T:
    """Run blocking disk work in a thread (its OSError reaches the caller as it is)."""
    return await trio.to_thread.run_sync(func, *args)


class Union:
    """The writable merged tree: ``tree`` (lower layers + upper), written to ``upper``.

    ``UpperMarks`` (noted while the one tree was built) says which nodes the upper
    directory holds, which directories are opaque there, and, per directory, what the
    lower layers have in it: whether removing a name must leave a whiteout (the name exists
    below) and whether a new directory must be opaque."""

    def __init__(self, tree: MergedTree, upper: Upper, overrides: Overrides) -> None:
        self.tree = tree
        self.upper = upper
        self.overrides = overrides
        marks = tree.upper or UpperMarks()
        self._present = marks.present
        self._opaque = marks.opaque
        self._below = marks.below
        self._lock = trio.Lock()
        # Lazy layers (fsnap.lazy): a file is fetched before it is read or copied up.
        self.lazy_files: LazyFiles | None = None
        # ino -> every (parent, name) of a non-directory with more than one name
        self._links: dict[int, list[tuple[Node, bytes]]] = {}
        # directory ino -> name -> its slot in ``names`` (built on a directory's first removal)
        self._slots: dict[int, dict[bytes, int]] = {}
        for parent in tree.nodes:
            if parent is not None and parent.children is not None:
                for name, child in parent.children.items():
                    if not child.is_dir and child.nlink > 1:
                        self._links.setdefault(child.ino, []).append((parent, name))

    # --- reading the tree ------------------------------------------------------------------

    def node(self, ino: int) -> Node:
        try:
            node = self.tree.nodes[ino]
        except IndexError:
            node = None
        if node is None:
            raise _fail(errno.ENOENT)
        return node

    def is_upper(self, node: Node) -> bool:
        """Does the upper directory hold ``node`` (copied up or created)?"""
        return node in self._present

    def is_opaque(self, node: Node) -> bool:
        """Is directory ``node`` opaque in the upper directory?"""
        return node in self._opaque

    def path(self, node: Node) -> bytes:
        """``node``'s path from the root (its first name), ``b""`` for the root."""
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

    def _dir(self, ino: int) -> Node:
        node = self.node(ino)
        if node.children is None:
            raise _fail(errno.ENOTDIR)
        return node

    def _child(self, parent: Node, name: bytes) -> Node:
        assert parent.children is not None
        child = parent.children.get(name)
        if child is None:
            raise _fail(errno.ENAMETOOLONG if len(name) > NAME_MAX else errno.ENOENT)
        return child

    def _lower_at(self, parent: Node, name: bytes) -> bool | None:
        """Whether the lower layers' ``parent/name`` (if it shows through) is a directory;
        None if nothing below shows there.

        The lower names noted for ``parent`` describe the lower directory at ``parent``'s
        path when the mount started. That is still its path unless it or an ancestor was
        renamed, and a renamed directory is materialized opaque, which the walk up stops
        at first."""
        node = parent
        while True:
            if node in self._opaque:
                return None
            if node is self.tree.root:
                break
            assert node.parent is not None
            node = node.parent
        return self._below.get(parent, {}).get(name)

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

    # --- changing the tree -----------------------------------------------------------------

    def _new_node(self, entry: Entry, opaque: bool) -> Node:
        node = Node(entry, None, len(self.tree.layer_names) - 1)
        node.ino = len(self.tree.nodes)
        self._present.add(node)
        if opaque:
            self._opaque.add(node)
        if node.is_dir:
            node.names = []
            node.nlink = 2
        else:
            node.nlink = 0  # _insert counts its first name
        self.tree.nodes.append(node)
        return node

    def _insert(self, parent: Node, name: bytes, node: Node) -> None:
        assert parent.children is not None
        assert parent.names is not None
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
        assert parent.children is not None
        assert parent.names is not None
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

    # --- copy-up ---------------------------------------------------------------------------

    async def _up_dir(self, node: Node) -> None:
        """Make directory ``node`` (and its ancestors) exist in the upper directory."""
        if node in self._present:
            return
        if node is self.tree.root:
            await _disk(self.upper.set_root, self._entry(node, b""))
            self._present.add(node)
            await self._sync(node, force=True)
            return
        assert node.parent is not None
        await self._up_dir(node.parent)
        rel = self.path(node)
        await _disk(self.upper.copy_up, rel, self._entry(node, rel))
        self._present.add(node)
        await self._sync(node)

    async def _up(self, node: Node, data: bool = True) -> None:
        """Copy ``node`` up (content through ``work/``), and link its other names to it."""
        if node in self._present:
            return
        if node.is_dir:
            await self._up_dir(node)
            return
        links = self._links_of(node)
        if not links:
            raise _fail(errno.ENOENT)
        for parent, _ in links:
            await self._up_dir(parent)
        first = join(self.path(links[0][0]), links[0][1])
        source = node.source if data else None
        if source is not None and self.lazy_files is not None:
            await self.lazy_files.ensure_readable(source)  # a lazy layer's file: contents first
        await _disk(self.upper.copy_up, first, self._entry(node, first), source)
        for parent, name in links[1:]:
            await _disk(self.upper.link_up, first, join(self.path(parent), name))
        self._present.add(node)
        node.source = None
        if not data:
            node.size = 0
        await self._sync(node)

    async def _materialize(self, top: Node) -> None:
        """Copy up a directory with everything below it, each directory opaque: the
        lower layers no longer matter to it, so it can move anywhere."""
        for node in list(self._subtree(top)):
            await self._up(node)
            if node.is_dir and node not in self._opaque:
                await _disk(self.upper.mark_opaque, self.path(node))
                self._opaque.add(node)

    async def _sync(self, node: Node, force: bool = False) -> None:
        """Keep ``node``'s override entries (one per name) in step with its metadata."""
        if self.upper.privileged and not force:
            return
        if node is self.tree.root:
            paths = [b""]
        else:
            paths = [join(self.path(p), n) for p, n in self._links_of(node)]
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
        """Size and times come from disk (after the disk changed them). Callers hold the
        lock and have copied ``node`` up; it has a name (a nameless file is changed
        through its descriptor only). A regular file is one on disk too (an unprivileged
        mount's devices and fifos are empty files there: their size stays 0)."""
        st = await _disk(self.upper.lstat, self.path(node))
        node.mtime, node.atime = st.st_mtime_ns, st.st_atime_ns
        if stat.S_ISREG(node.mode):
            node.size = st.st_size

    # --- creating --------------------------------------------------------------------------

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
        await _disk(self.upper.unwhiteout, self.path(parent), name)

    @staticmethod
    def _owner(parent: Node, uid: int, gid: int, mode: int) -> tuple[int, int, int]:
        """uid, gid and permission bits of a new node (BSD group of a setgid directory)."""
        perms = mode & 0o7777
        if parent.mode & stat.S_ISGID:
            gid = parent.gid
            if stat.S_ISDIR(mode):
                perms |= stat.S_ISGID
        return uid, gid, perms

    async def make(
        self, parent_ino: int, name: bytes, new: NewObject, caller: tuple[int, int]
    ) -> Node:
        """Create ``name`` in directory ``parent_ino`` as ``new`` says, owned by ``caller``
        (uid, gid) unless the setgid policy gives it the directory's group."""
        async with self._lock:
            return await self._create(parent_ino, name, new, caller)

    async def create_file(
        self, parent_ino: int, name: bytes, mode: int, caller: tuple[int, int]
    ) -> tuple[Node, int]:
        """A new regular file, and a read-write descriptor of it in the upper directory."""
        async with self._lock:
            node = await self._create(parent_ino, name, NewObject("file", mode), caller)
            fd = await _disk(self.upper.open, self.path(node), os.O_RDWR)
        return node, fd

    async def _create(
        self, parent_ino: int, name: bytes, new: NewObject, caller: tuple[int, int]
    ) -> Node:
        parent = self._dir(parent_ino)
        self._check_new_name(name)
        if new.kind == "char" and new.rdev == 0:
            raise _fail(errno.EPERM)  # a whiteout in overlayfs's format (overlayfs: EPERM)
        await self._make_room(parent, name)
        uid, gid, perms = self._owner(parent, *caller, new.mode)
        rel = join(self.path(parent), name)
        entry = Entry(
            path=os.fsdecode(rel),
            kind=new.kind,
            mode=perms,
            uid=uid,
            gid=gid,
            mtime=time.time_ns(),
            link=os.fsdecode(new.link),
            devmajor=os.major(new.rdev),
            devminor=os.minor(new.rdev),
        )
        opaque = new.kind == "dir" and bool(self._lower_at(parent, name))
        await _disk(self.upper.place, rel, entry, None, opaque)
        node = self._new_node(entry, opaque)
        self._insert(parent, name, node)
        await self._refresh(node)
        await self._refresh(parent)
        await self._sync(node)
        return node

    async def link(self, ino: int, new_parent_ino: int, new_name: bytes) -> Node:
        """A new name ``new_name`` in ``new_parent_ino`` for non-directory ``ino``."""
        async with self._lock:
            node = self.node(ino)
            if node.is_dir:
                raise _fail(errno.EPERM)
            parent = self._dir(new_parent_ino)
            self._check_new_name(new_name)
            await self._make_room(parent, new_name)
            await self._up(node)
            rel = join(self.path(parent), new_name)
            await _disk(self.upper.link, self.path(node), rel)
            self._insert(parent, new_name, node)
            await self._refresh(parent)
            await self._sync(node)
        return node

    # --- removing --------------------------------------------------------------------------

    async def unlink(self, parent_ino: int, name: bytes) -> None:
        async with self._lock:
            parent = self._dir(parent_ino)
            node = self._child(parent, name)
            if node.is_dir:
                raise _fail(errno.EISDIR)
            await self._remove(parent, name, node)

    async def rmdir(self, parent_ino: int, name: bytes) -> None:
        async with self._lock:
            parent = self._dir(parent_ino)
            node = self._child(parent, name)
            if not node.is_dir:
                raise _fail(errno.ENOTDIR)
            if node.children:
                raise _fail(errno.ENOTEMPTY)
            await self._remove(parent, name, node)

    async def _remove(self, parent: Node, name: bytes, node: Node) -> None:
        await self._up_dir(parent)
        parent_rel = self.path(parent)
        rel = join(parent_rel, name)
        whiteout = (parent_rel, name) if self._lower_at(parent, name) is not None else None
        upper = node in self._present
        await _disk(self.upper.remove, rel if upper else None, whiteout)
        if not self.upper.privileged and upper:
            await _disk(self.overrides.delete, os.fsdecode(rel), node.is_dir)
        self._drop(parent, name)
        await self._refresh(parent)

    # --- renaming --------------------------------------------------------------------------

    async def rename(
        self, old_parent_ino: int, name_old: bytes, new_parent_ino: int, name_new: bytes, flags: int
    ) -> None:
        """``renameat2``: ``flags`` may hold ``RENAME_NOREPLACE`` or ``RENAME_EXCHANGE``."""
        if (flags & RENAME_EXCHANGE and flags & RENAME_NOREPLACE) or flags & ~_RENAME_FLAGS:
            raise _fail(errno.EINVAL)
        async with self._lock:
            old_parent = self._dir(old_parent_ino)
            new_parent = self._dir(new_parent_ino)
            node = self._child(old_parent, name_old)
            self._check_new_name(name_new)
            assert new_parent.children is not None
            target = new_parent.children.get(name_new)
            move = _Move(old_parent, name_old, new_parent, name_new, node)
            if flags & RENAME_EXCHANGE:
                if target is None:
                    raise _fail(errno.ENOENT)
                if target is not node:
                    self._check_inside(node, new_parent)
                    self._check_inside(target, old_parent)
                    await self._exchange(move, target)
                return
            if target is node:
                return
            self._check_rename(node, new_parent, target, flags)
            await self._move(move, target)

    def _check_inside(self, node: Node, new_parent: Node) -> None:
        """A directory cannot move below itself (EINVAL)."""
        if node.is_dir:
            above: Node | None = new_parent
            while above is not None and above is not self.tree.root:
                if above is node:
                    raise _fail(errno.EINVAL)
                above = above.parent

    async def _exchange(self, move: _Move, target: Node) -> None:
        """``RENAME_EXCHANGE``: both objects are copied up (directories with all they
        hold, made opaque: they may land where other lower directories are), then swapped
        in the upper directory in one ``renameat2``; neither name needs a whiteout, since
        both stay in use."""
        node = move.node
        await self._up_movable(target)
        old_rel, new_rel = await self._up_move(move)
        await _disk(self.upper.exchange, old_rel, new_rel)
        if not self.upper.privileged:
            await _disk(self.overrides.delete, os.fsdecode(old_rel), node.is_dir)
            await _disk(self.overrides.delete, os.fsdecode(new_rel), target.is_dir)
        self._drop(move.new_parent, move.name_new)
        self._drop(move.old_parent, move.name_old)
        self._insert(move.new_parent, move.name_new, node)
        self._insert(move.old_parent, move.name_old, target)
        await self._refresh(move.old_parent)
        await self._refresh(move.new_parent)
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

    async def _up_move(self, move: _Move) -> tuple[bytes, bytes]:
        """Copy up what ``move`` needs; the moving node's old and new upper paths."""
        await self._up_movable(move.node)
        await self._up_dir(move.new_parent)
        await self._up_dir(move.old_parent)
        old_rel = join(self.path(move.old_parent), move.name_old)
        return old_rel, join(self.path(move.new_parent), move.name_new)

    async def _move(self, move: _Move, target: Node | None) -> None:
        """A plain rename: ``target`` (None, or what ``move`` replaces) goes away, and the
        old name leaves a whiteout if the lower layers have it."""
        node = move.node
        old_rel, new_rel = await self._up_move(move)
        below = self._lower_at(move.old_parent, move.name_old) is not None
        whiteout = (self.path(move.old_parent), move.name_old) if below else None
        clear = target is not None and target.is_dir and target in self._present
        await _disk(self.upper.rename, old_rel, new_rel, clear, whiteout)
        if not self.upper.privileged:
            await _disk(self.overrides.delete, os.fsdecode(old_rel), node.is_dir)
            if target is not None:
                await _disk(self.overrides.delete, os.fsdecode(new_rel), target.is_dir)
        if target is not None:
            self._drop(move.new_parent, move.name_new)
        self._drop(move.old_parent, move.name_old)
        self._insert(move.new_parent, move.name_new, node)
        await self._refresh(move.old_parent)
        await self._refresh(move.new_parent)
        await self._sync_tree(node)

    # --- attributes ------------------------------------------------------------------------

    async def set_attrs(self, ino: int, change: AttrChange, fd: int | None) -> Node:
        """Apply ``change`` to ``ino`` (copied up first). An open file with no name left is
        reached through ``fd`` only, the descriptor the request came with (if any)."""
        async with self._lock:
            node = self.node(ino)
            if node not in self._present:
                await self._up(node, data=change.size != 0)
            if node.nlink == 0 and not node.is_dir:
                return await self._set_attrs_unlinked(node, change, fd)
            rel = self.path(node)
            if change.mode is not None:
                node.mode = stat.S_IFMT(node.mode) | (change.mode & 0o7777)
            if change.uid is not None:
                node.uid = change.uid
            if change.gid is not None:
                node.gid = change.gid
            if change.mode is not None or change.uid is not None or change.gid is not None:
                await _disk(self.upper.apply_at, rel, self._entry(node, rel), False)
                await self._sync(node, force=node is self.tree.root)
            if change.size is not None:
                await _disk(self.upper.truncate, rel, change.size)
            if change.atime is not None or change.mtime is not None:
                await _disk(self.upper.set_times, rel, change.atime, change.mtime)
            await self._refresh(node)
        return node

    async def _set_attrs_unlinked(self, node: Node, change: AttrChange, fd: int | None) -> Node:
        if fd is None:
            raise _fail(errno.ESTALE)
        if change.size is not None:
            await _disk(os.ftruncate, fd, change.size)
            node.size = change.size
        if change.mode is not None:
            node.mode = stat.S_IFMT(node.mode) | (change.mode & 0o7777)
        return node

    async def set_xattr(self, ino: int, name: bytes, value: bytes) -> None:
        """Set one xattr; overlayfs's own (``trusted.overlay.*`` and the like) are markers
        of the layer format, not content: EOPNOTSUPP, as kernel overlayfs answers."""
        if name.startswith(_OVERLAY_XATTRS):
            raise _fail(errno.EOPNOTSUPP)
        await self._change_xattr(ino, name, value)

    async def remove_xattr(self, ino: int, name: bytes) -> None:
        if name not in (self.node(ino).xattrs or {}):
            raise _fail(errno.ENODATA)
        await self._change_xattr(ino, name, None)

    async def _change_xattr(self, ino: int, name: bytes, value: bytes | None) -> None:
        async with self._lock:
            node = self.node(ino)
            await self._up(node)
            xattrs = dict(node.xattrs or {})
            if value is None:
                if xattrs.pop(name, None) is None:
                    raise _fail(errno.ENODATA)
            else:
                xattrs[name] = value
            rel = self.path(node)
            if self.upper.privileged:
                await _disk(self.upper.set_xattr, rel, name, value)
            node.xattrs = xattrs or None
            await self._sync(node, force=node is self.tree.root)

    # --- files -----------------------------------------------------------------------------

    async def open(self, ino: int, flags: int) -> tuple[Node, int]:
        """A descriptor for ``open(2)`` with ``flags``: of the upper file (copied up first
        when writing or truncating, under the lock with the open: no rename or unlink
        comes between), else of the lower layer's content."""
        node = self.node(ino)
        if not flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC):
            return node, await self._open(node, flags)
        async with self._lock:
            await self._up(node, data=not flags & os.O_TRUNC)
            return node, await self._open(node, flags)

    async def _open(self, node: Node, flags: int) -> int:
        writing = flags & (os.O_WRONLY | os.O_RDWR)
        if node not in self._present or node.nlink == 0:
            if writing:
                raise _fail(errno.EROFS)
            if node.source is not None and self.lazy_files is not None:
                await self.lazy_files.ensure_readable(node.source)
            return _open_lower(node)
        access = os.O_RDWR if writing else os.O_RDONLY
        fd = await _disk(self.upper.open, self.path(node), access | (flags & os.O_TRUNC))
        if flags & os.O_TRUNC:
            await self._refresh(node)
        return fd

    async def write(self, fd: int, node: Node | None, off: int, buf: bytes) -> int:
        """Into the page cache on the loop when that cannot block (RWF_NOWAIT, where the
        file system takes it), else in a worker thread; ``node``'s size and mtime then come
        from the file."""
        written = write_nowait(fd, buf, off)
        rest = memoryview(buf)[written:]
        if rest:
            written += await _disk(os.pwrite, fd, rest, off + written)
        if node is not None:
            st = os.fstat(fd)
            node.size, node.mtime = st.st_size, st.st_mtime_ns
        return written

    async def fsync_dir(self, ino: int) -> None:
        node = self.node(ino)
        if node in self._present:  # a change anywhere copied the root up first
            await _disk(self.upper.fsync_dir, self.path(node))

    async def statvfs(self) -> os.statvfs_result:
        """The upper file system's numbers: that is where new data goes."""
        return await _disk(os.statvfs, self.upper.fs)


def _open_lower(node: Node) -> int:
    """A descriptor of the lower content of ``node``, for reading only."""
    if node.source is None:
        raise _fail(errno.EIO if stat.S_ISREG(node.mode) else errno.EINVAL)
    return open_source(node.source)
