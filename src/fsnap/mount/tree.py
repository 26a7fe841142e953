"""The merged view of a snapshot chain, built once from the layer indexes.

A FUSE daemon that probed each layer directory on every lookup would pay for the layer count
on every request. Lower layers are immutable, so fsnap instead folds the chain's indexes
(bottom -> top) into one in-memory tree when the mount starts: after that, a lookup is one
dict access and a readdir is a slice of a list, whatever the number of layers.

Metadata comes from the index only (the directory of an unprivileged unpack holds neither
owners nor devices); the tree keeps, per regular file, the on-disk path of its content.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from fsnap.archive.entry import Entry
from fsnap.archive.format import KIND_BITS

DIR_SIZE = 4096


@dataclass
class Layer:
    """One layer of the chain: its directory (contents) and its index (metadata).

    ``name`` (the snapshot's chain ID, or the bare directory) is what provenance reports."""

    dir: os.PathLike[str] | str
    entries: list[Entry]
    name: str = ""
    # The writable top of a read-write mount: its nodes are marked ``upper``.
    upper: bool = False


class Node:
    """One inode of the merged tree.

    Slots keep a 100k-entry tree small. ``names``/``children`` are set for directories only:
    ``names`` is the frozen order readdir serves (an offset is an index into it, so offsets
    stay valid across seekdir/telldir) and ``children`` the lookup table. ``source`` is the
    path of a regular file's content in the layer that provides it.

    ``parent``/``name`` are the node's first link (a writable mount turns an inode back into
    a path with them). A writable mount may put ``None`` in ``names`` where a name went
    away, so that offsets handed out stay valid. What only a writable mount needs to know
    about a node is kept beside the tree (``UpperMarks``), not in every node.
    """

    __slots__ = (
        "ino",
        "mode",
        "uid",
        "gid",
        "size",
        "mtime",
        "atime",
        "rdev",
        "nlink",
        "link",
        "xattrs",
        "source",
        "parent",
        "name",
        "names",
        "children",
        "layer",
    )

    def __init__(self, entry: Entry, source: str | None, layer: int = -1) -> None:
        self.ino = 0
        # Provenance: index (bottom = 0) of the layer this node's entry (or, for a directory
        # named again higher up, its attributes) comes from. -1 only before any layer.
        self.layer = layer
        self.mode = KIND_BITS[entry.kind] | (entry.mode & 0o7777)
        self.uid = entry.uid
        self.gid = entry.gid
        self.mtime = entry.mtime
        self.atime = entry.mtime if entry.atime is None else entry.atime
        self.link: bytes | None = None
        self.rdev = 0
        self.nlink = 1
        self.xattrs: dict[bytes, bytes] | None = _xattrs(entry)
        self.source = source
        self.parent: Node | None = None
        self.name = b""
        self.names: list[bytes | None] | None = None
        self.children: dict[bytes, Node] | None = None
        self.size = entry.size
        if entry.kind == "symlink":
            self.link = os.fsencode(entry.link)
            self.size = len(self.link)
        elif entry.kind in ("char", "block"):
            self.rdev = os.makedev(entry.devmajor, entry.devminor)
            self.size = 0
        elif entry.kind == "dir":
            self.children = {}
            self.size = DIR_SIZE
        elif entry.kind in ("fifo", "socket"):
            self.size = 0

    @property
    def is_dir(self) -> bool:
        return self.children is not None

    def set_dir_attrs(self, entry: Entry, layer: int = -1) -> None:
        """A directory named again in a higher layer takes that layer's attributes (and,
        unless the applier only made it up as a parent, that layer's provenance)."""
        if layer >= 0 and not entry.implicit:
            self.layer = layer
        self.mode = stat.S_IFDIR | (entry.mode & 0o7777)
        self.uid = entry.uid
        self.gid = entry.gid
        self.mtime = entry.mtime
        self.atime = entry.mtime if entry.atime is None else entry.atime
        self.xattrs = _xattrs(entry)


def _xattrs(entry: Entry) -> dict[bytes, bytes] | None:
    if not entry.xattrs:
        return None
    return {os.fsencode(k): v for k, v in entry.xattrs.items()}


ROOT_ENTRY = Entry(path="", kind="dir", mode=0o755)


@dataclass
class UpperMarks:
    """What a writable mount knows about its tree beyond the merged view, noted while the
    upper layer is applied (read-only trees have none, so their nodes stay small).

    ``present``: the nodes the upper directory holds. ``opaque``: its directories that hide
    the lower layers. ``below``: for each directory of the lower layers, each name they
    have in it and whether it is a directory there; it answers "does this name exist
    below?" (a removal leaves a whiteout, a new directory is opaque) without a second
    tree."""

    present: set[Node] = field(default_factory=set)
    opaque: set[Node] = field(default_factory=set)
    below: dict[Node, dict[bytes, bool]] = field(default_factory=dict)


class MergedTree:
    """The chain's merged tree: ``nodes[ino]`` is the node with inode number ``ino``.
    ``upper``: the marks of a writable mount's upper layer, if the tree has one."""

    def __init__(
        self, root: Node, nodes: list[Node | None], upper: UpperMarks | None = None
    ) -> None:
        self.root = root
        self.nodes = nodes
        self.upper = upper
        self.total_size = sum(n.size for n in nodes if n is not None and n.source is not None)
        # Layer names bottom -> top (``Node.layer`` indexes this), for provenance.
        self.layer_names: list[str] = []

    @classmethod
    def build(cls, layers: Iterable[Layer]) -> MergedTree:
        """Fold the layers (bottom -> top) into one tree; one pass over each index."""
        builder = _Builder()
        names = []
        for layer in layers:
            builder.apply(layer)
            names.append(layer.name)
        tree = builder.finish()
        tree.layer_names = names
        return tree

    def lookup(self, path: str) -> Node | None:
        """The node at ``path`` ('/'-separated, no leading slash; ``""`` is the root)."""
        return _find(self.root, path)

    def walk(self) -> Iterator[tuple[bytes, Node]]:
        """Every (path, node) pair below the root, parents first (paths without leading /)."""
        stack: list[tuple[bytes, Node]] = [(b"", self.root)]
        while stack:
            path, node = stack.pop()
            for name in node.names or ():
                if name is None:
                    continue
                child = (node.children or {})[name]
                child_path = path + b"/" + name if path else name
                yield child_path, child
                if child.is_dir:
                    stack.append((child_path, child))


class _Builder:
    """Mutable state of one build: the tree so far, before inode numbers are assigned."""

    def __init__(self) -> None:
        self.root = Node(ROOT_ENTRY, None)
        self.layer = -1  # index of the layer being applied
        self.upper = False  # applying a writable mount's upper layer
        self.marks: UpperMarks | None = None  # since the upper layer began

    def lookup(self, path: str) -> Node | None:
        """The node at ``path`` in the tree built so far: ``fsnap.inspect`` compares each
        layer with the layers beneath it this way, folding the chain only once."""
        return _find(self.root, path)

    def apply(self, layer: Layer) -> None:
        """Apply one layer: its whiteouts and opaque markers hit only the layers beneath,
        so they go first; then its entries, parents before children (sorted paths), and
        hard links last because a link may precede its target in the tar."""
        self.layer += 1
        if layer.upper and self.marks is None:
            self.marks = UpperMarks(below=self._below())
        if self.root.layer < 0:
            self.root.layer = self.layer
        base = os.fspath(layer.dir)
        entries = layer.entries
        self.upper = layer.upper
        for entry in entries:
            if entry.kind == "whiteout":
                self._remove(entry.path)
            elif entry.kind == "dir" and entry.opaque:
                self._make_opaque(entry.path)
        links: list[Entry] = []
        for entry in sorted(entries, key=_path_key):
            if entry.kind == "whiteout":
                continue
            if entry.kind == "hardlink":
                links.append(entry)
            else:
                self._add(entry, base)
        for entry in links:
            self._link(entry)

    def _below(self) -> dict[Node, dict[bytes, bool]]:
        """Before a writable mount's upper layer: what the lower layers have in each
        directory (``UpperMarks.below``)."""
        below: dict[Node, dict[bytes, bool]] = {}
        stack = [self.root]
        while stack:
            node = stack.pop()
            assert node.children is not None
            below[node] = {name: child.is_dir for name, child in node.children.items()}
            stack.extend(child for child in node.children.values() if child.is_dir)
        return below

    def _mark(self, node: Node, opaque: bool) -> None:
        """``node`` comes from the upper layer (and is opaque there if ``opaque``)."""
        if self.marks is not None and self.upper:
            self.marks.present.add(node)
            if opaque:
                self.marks.opaque.add(node)

    def _dir(self, path: str) -> Node:
        """The directory at ``path``, created (or made to replace a non-directory) if needed.

        The applier normally names every parent (as an implicit entry); this covers an index
        that does not, with the containerd default of 0755 root:root."""
        node = self.root
        if not path:
            return node
        for part in os.fsencode(path).split(b"/"):
            assert node.children is not None
            child = node.children.get(part)
            if child is None or not child.is_dir:
                child = Node(Entry(path="", kind="dir", mode=0o755), None, self.layer)
                self._attach(node, part, child)
            node = child
        return node

    def _attach(self, parent: Node, name: bytes, node: Node) -> None:
        assert parent.children is not None
        old = parent.children.get(name)
        if old is not None:
            _detach(old)
            # Keep the name's place in the listing order: dicts keep insertion order.
            del parent.children[name]
        parent.children[name] = node
        if node.is_dir:
            node.parent = parent

    def _remove(self, path: str) -> None:
        parent_path, _, name = path.rpartition("/")
        parent = self.lookup(parent_path)
        if parent is None or parent.children is None:
            return
        old = parent.children.pop(os.fsencode(name), None)
        if old is not None:
            _detach(old)

    def _make_opaque(self, path: str) -> None:
        node = self.lookup(path)
        if node is not None and node.children is not None:
            for child in node.children.values():
                _detach(child)
            node.children.clear()
            if self.marks is not None and self.upper:
                self.marks.opaque.add(node)

    def _add(self, entry: Entry, base: str) -> None:
        if not entry.path:
            self.root.set_dir_attrs(entry, self.layer)
            self._mark(self.root, entry.opaque)
            return
        parent_path, _, name = entry.path.rpartition("/")
        parent = self._dir(parent_path)
        assert parent.children is not None
        key = os.fsencode(name)
        if entry.kind == "dir":
            existing = parent.children.get(key)
            if existing is not None and existing.is_dir:
                existing.set_dir_attrs(entry, self.layer)
                self._mark(existing, entry.opaque)
                return
        source = os.path.join(base, entry.path) if entry.kind == "file" else None
        node = Node(entry, source, self.layer)
        self._mark(node, entry.opaque)
        self._attach(parent, key, node)

    def _link(self, entry: Entry) -> None:
        target = self.lookup(entry.link)
        if target is None or target.is_dir:
            return  # a link to nothing the applier accepted: nothing to show
        parent_path, _, name = entry.path.rpartition("/")
        parent = self._dir(parent_path)
        assert parent.children is not None
        key = os.fsencode(name)
        if parent.children.get(key) is target:
            return
        self._attach(parent, key, target)
        target.nlink += 1

    def finish(self) -> MergedTree:
        """Freeze listing order, number the inodes, count directory links."""
        nodes: list[Node | None] = [None, self.root]
        self.root.ino = 1
        self.root.parent = self.root
        stack = [self.root]
        while stack:
            node = stack.pop()
            assert node.children is not None
            node.names = list(node.children)
            subdirs = 0
            for name, child in node.children.items():
                if child.ino == 0:
                    child.ino = len(nodes)
                    child.parent, child.name = node, name
                    nodes.append(child)
                if child.is_dir:
                    subdirs += 1
                    stack.append(child)
            node.nlink = 2 + subdirs
        return MergedTree(self.root, nodes, self.marks)


# The builder, for callers that need the tree between layers (``fsnap.inspect``).
TreeBuilder = _Builder


def _find(root: Node, path: str) -> Node | None:
    """The node at ``path`` below ``root`` (the one path walk of built and unfinished
    trees alike)."""
    node: Node | None = root
    for part in os.fsencode(path).split(b"/") if path else ():
        if node is None or node.children is None:
            return None
        node = node.children.get(part)
    return node


def _detach(node: Node) -> None:
    """A name of ``node`` goes away: one link fewer, and a directory takes its subtree along
    (so a hard link that lived inside a removed directory is counted right elsewhere)."""
    if node.children is None:
        node.nlink -= 1
        return
    stack = [node]
    while stack:
        current = stack.pop()
        assert current.children is not None
        for child in current.children.values():
            if child.children is None:
                child.nlink -= 1
            else:
                stack.append(child)


def _path_key(entry: Entry) -> str:
    """A sort key under which every directory comes before what it contains."""
    return entry.path
