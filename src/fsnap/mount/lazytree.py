"""A merged tree kept as flat arrays, whose nodes are made when a directory is first used.

The tree cache (``fsnap.mount.treecache``) saves a read-only tree in this form. Loading
then does no per-entry Python work: each attribute is one array of fixed-width numbers
(a ``memoryview`` over the loaded bytes), names and content paths one byte string each
with offsets. ``Node`` objects appear on demand: the root at load, and a directory's
children when its listing is first asked for (``LazyDir.children`` / ``names``), which a
lookup or readdir in it does. So mounting a 500,000-entry image costs the same as mounting
a small one, and a mount that is only partly walked holds only the nodes walked.

Measured (``scripts/benchlib/treeprofile.py``, 100,000 entries, CPU time): loading a tree
of eager ``Node`` objects from ``marshal``'d tuples took 474 ms (one list per attribute and
the collector paused: 279 ms); this form loads in a few ms, and all nodes made by a full
walk take about the same memory as the eager tree (numbers every node shares, such as
modes and times, are made once).

Inode numbers are positions in the arrays (0 unused), so the kernel's view is the same as
with the eager tree. Only read-only mounts use it: nothing here supports changing a tree.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Iterable
from typing import Any, cast

from fsnap.mount.tree import MergedTree, Node

# Attribute columns, one number per inode (index 0 unused), and their array type codes.
NUMBERS = (
    ("mode", "I"),
    ("uid", "I"),
    ("gid", "I"),
    ("size", "q"),
    ("mtime", "q"),
    ("atime", "q"),
    ("rdev", "Q"),
    ("nlink", "I"),
    ("layer", "i"),
    ("parent", "I"),
    ("has_source", "B"),
)
# Offset columns (one more than their strings) and flat arrays.
OFFSETS = ("name_at", "source_at", "listing_at", "entry_name_at")
FLAT = (("entry_ino", "I"),)
BLOBS = ("names", "sources", "entry_names")

SHARED = 4096
Encoded = dict[str, Any]  # column name -> bytes (arrays) or bytes (blobs), plus sparse maps

# The slots of ``Node`` that LazyDir's properties stand in front of.
_children: Any = Node.__dict__["children"]
_names: Any = Node.__dict__["names"]


def encode(tree: MergedTree, relative: Iterable[str | None]) -> Encoded:
    """The tree's columns; ``relative`` gives each node's content path (inode order from
    1), relative to its layer's directory."""
    nodes = [node for node in tree.nodes[1:] if node is not None]
    columns: dict[str, array[int]] = {name: array(code, [0]) for name, code in NUMBERS}
    for name, _ in NUMBERS:
        column = columns[name]
        if name == "parent":
            column.extend(n.parent.ino if n.parent is not None else 0 for n in nodes)
        elif name != "has_source":
            column.extend(getattr(n, name) for n in nodes)
    # Per inode: index 0 unused, so inode i's string is [at[i], at[i + 1]); per listing
    # entry: entry k's name is [at[k], at[k + 1]).
    offsets = {name: array("Q", [0] if name == "entry_name_at" else [0, 0]) for name in OFFSETS}
    blobs = {name: bytearray() for name in BLOBS}
    entry_ino = array("I")
    links: dict[int, bytes] = {}
    xattrs: dict[int, dict[bytes, bytes]] = {}
    for node, rel in zip(nodes, relative, strict=True):
        columns["has_source"].append(rel is not None)
        _append(blobs["names"], offsets["name_at"], node.name)
        _append(blobs["sources"], offsets["source_at"], os.fsencode(rel or ""))
        if node.children is not None:
            for entry in node.names or ():
                if entry is not None:
                    _append(blobs["entry_names"], offsets["entry_name_at"], entry)
                    entry_ino.append(node.children[entry].ino)
        offsets["listing_at"].append(len(entry_ino))
        if node.link is not None:
            links[node.ino] = node.link
        if node.xattrs is not None:
            xattrs[node.ino] = node.xattrs
    encoded: Encoded = {name: column.tobytes() for name, column in columns.items()}
    encoded.update((name, column.tobytes()) for name, column in offsets.items())
    encoded.update((name, bytes(blob)) for name, blob in blobs.items())
    encoded["entry_ino"] = entry_ino.tobytes()
    encoded.update(count=len(nodes), links=links, xattrs=xattrs, total_size=tree.total_size)
    return encoded


def _append(blob: bytearray, offsets: array[int], data: bytes) -> None:
    blob += data
    offsets.append(len(blob))


class LazyDir(Node):
    """A directory of a lazy tree: its listing is made at its first use."""

    __slots__ = ("table",)

    table: LazyNodes | None

    @property
    def children(self) -> dict[bytes, Node] | None:
        if self.table is not None:
            self.table.fill(self)
        return _children.__get__(self, Node)  # type: ignore[no-any-return]

    @children.setter
    def children(self, value: dict[bytes, Node] | None) -> None:
        _children.__set__(self, value)

    @property
    def names(self) -> list[bytes | None] | None:
        if self.table is not None:
            self.table.fill(self)
        return _names.__get__(self, Node)  # type: ignore[no-any-return]

    @names.setter
    def names(self, value: list[bytes | None] | None) -> None:
        _names.__set__(self, value)

    @property
    def is_dir(self) -> bool:
        return True


class LazyFile(Node):
    """A regular file of a lazy tree: its content path is made when it is opened (most
    files of a large image never are), not held by every node."""

    __slots__ = ("table",)

    table: LazyNodes

    @property
    def source(self) -> str | None:
        return self.table.source(self)

    @source.setter
    def source(self, value: str | None) -> None:
        raise AttributeError("a lazy tree is read-only")


class LazyNodes:
    """Makes the nodes of one decoded tree into ``nodes`` (the tree's inode table)."""

    def __init__(self, encoded: Encoded, dirs: list[str], nodes: list[Node | None]) -> None:
        count = encoded["count"]
        if not isinstance(count, int) or count < 1:
            raise ValueError("the cache holds no nodes")
        self.nodes = nodes
        self.col = {name: _view(encoded[name], code, count + 1) for name, code in NUMBERS}
        self.at = {name: _view(encoded[name], "Q", None) for name in OFFSETS}
        for name in ("name_at", "source_at", "listing_at"):
            if len(self.at[name]) != count + 2:
                raise ValueError(f"the cache's {name} has the wrong length")
        self.entry_ino = _view(encoded["entry_ino"], "I", len(self.at["entry_name_at"]) - 1)
        self.blob: dict[str, bytes] = {name: encoded[name] for name in BLOBS}
        if not all(isinstance(blob, bytes) for blob in self.blob.values()):
            raise TypeError("the cache's strings are not bytes")
        for column in (self.col["parent"][1:], self.entry_ino):
            if len(column) and (min(column) < 1 or max(column) > count):
                raise IndexError("the cache names an inode it does not hold")
        self.links: dict[int, bytes] = encoded["links"]
        self.xattrs: dict[int, dict[bytes, bytes]] = encoded["xattrs"]
        self.bases = [base + os.sep for base in dirs]
        self.shared: dict[int, int] = {}

    def get(self, ino: int) -> Node:
        """The node with inode ``ino`` (made now if it was not yet)."""
        node = self.nodes[ino]
        return node if node is not None else self._make(ino)

    def _make(self, ino: int) -> Node:
        col = self.col
        mode = col["mode"][ino]
        node: Node
        if mode & 0o170000 == 0o040000:
            directory = LazyDir.__new__(LazyDir)
            directory.table = self
            node = directory
            node.source = None
        elif col["has_source"][ino]:
            file = LazyFile.__new__(LazyFile)
            file.table = self
            node = file
            node.children = node.names = None
        else:
            node = Node.__new__(Node)
            node.children = node.names = None
            node.source = None
        self.nodes[ino] = node
        node.ino = ino
        node.mode = self._shared(mode)
        node.uid = col["uid"][ino]
        node.gid = col["gid"][ino]
        node.size = col["size"][ino]
        node.mtime = mtime = self._shared(col["mtime"][ino])
        atime = col["atime"][ino]
        node.atime = mtime if atime == mtime else self._shared(atime)
        node.rdev = col["rdev"][ino]
        node.nlink = col["nlink"][ino]
        node.layer = col["layer"][ino]
        node.name = self._string("names", "name_at", ino)
        node.link = self.links.get(ino)
        node.xattrs = self.xattrs.get(ino)
        node.parent = self.get(col["parent"][ino])
        return node

    def source(self, node: Node) -> str:
        """The path of ``node``'s content: its layer's directory and its relative path."""
        rel = os.fsdecode(self._string("sources", "source_at", node.ino))
        layer = node.layer
        return self.bases[layer] + rel if 0 <= layer < len(self.bases) else rel

    def _shared(self, value: int) -> int:
        """One object per value for the first ``SHARED`` distinct modes and times (most
        images have few; beyond that, sharing would cost more than it saves)."""
        found = self.shared.get(value)
        if found is not None:
            return found
        if len(self.shared) < SHARED:
            self.shared[value] = value
        return value

    def _string(self, blob: str, offsets: str, index: int) -> bytes:
        at = self.at[offsets]
        return self.blob[blob][at[index] : at[index + 1]]

    def fill(self, node: LazyDir) -> None:
        """Make ``node``'s children and its listing (once)."""
        node.table = None
        at = self.at["listing_at"]
        start, end = at[node.ino], at[node.ino + 1]
        children = [self.get(ino) for ino in self.entry_ino[start:end]]
        names = [self._string("entry_names", "entry_name_at", i) for i in range(start, end)]
        # A child's own name is most often the one it is listed under: keep one object.
        names = [c.name if c.name == n else n for c, n in zip(children, names, strict=True)]
        node.names = list(names)
        node.children = dict(zip(names, children, strict=True))


def _view(data: object, code: str, length: int | None) -> memoryview[int]:
    """``data`` as an array of ``code`` numbers (of ``length`` items, if given): a view of
    the loaded bytes, neither copied nor converted."""
    if not isinstance(data, bytes):
        raise TypeError("a cache column is not bytes")
    if len(data) % array(code).itemsize:
        raise ValueError("a cache column is cut short")
    view: memoryview[int] = memoryview(data).cast(cast(Any, code))
    if length is not None and len(view) != length:
        raise ValueError("a cache column has the wrong length")
    return view


def decode(encoded: Encoded, dirs: list[str]) -> MergedTree:
    """The tree of ``encode``'s output: its root made, everything else on demand."""
    nodes: list[Node | None] = [None] * (encoded["count"] + 1)
    table = LazyNodes(encoded, dirs, nodes)
    root = table.get(1)
    if not isinstance(root, LazyDir) or root.parent is not root:
        raise ValueError("the cache has no root directory")
    tree = MergedTree(root, nodes)
    tree.total_size = encoded["total_size"]
    return tree
