"""What each layer changed against the layers beneath it (dive's added/modified/removed).

Answered from the layer indexes only. The chain is folded once with the mount's own
``TreeBuilder`` (so merging rules live in one place): before layer i is applied, the builder
holds the view of layers 0..i-1, which is exactly what layer i is compared with.

Rules (documented in docs/inspect-json.md):
- a non-whiteout entry is *added* when the path is absent beneath, else *modified*;
- a directory named again with the same mode, owner and xattrs is no change (tars re-list
  parent directories; their mtime alone is not reported); entries the applier made up for
  a missing parent (``implicit``) are never changes;
- a whiteout is *removed* with the bytes and entries of what it hid (cause ``whiteout``);
  a whiteout of nothing changes nothing and is not listed;
- an opaque directory is listed (modified or added, ``opaque``), and every lower child it
  hides that the layer does not name again is *removed* (cause ``opaque``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from fsnap.archive.entry import Entry
from fsnap.archive.format import kind_of_mode
from fsnap.mount.tree import Layer, MergedTree, Node, TreeBuilder

Mark = Literal["added", "modified", "removed"]
Cause = Literal["", "whiteout", "opaque", "replaced"]


@dataclass(frozen=True)
class Change:
    """One changed path (absolute). ``size``: bytes of the new entry (added/modified) or of
    everything hidden (removed); ``entries``: 1, or the entries a removal hid.
    ``lower_layer``: the layer whose version was modified or removed (None when added)."""

    path: str
    mark: Mark
    kind: str
    size: int
    entries: int = 1
    cause: Cause = ""
    opaque: bool = False
    lower_layer: int | None = None
    lower_size: int | None = None


@dataclass
class LayerChanges:
    """The changes of one layer (or of a range of layers) against what lies beneath."""

    first: int
    last: int
    changes: list[Change] = field(default_factory=list)

    def count(self, mark: Mark) -> int:
        return sum(1 for change in self.changes if change.mark == mark)

    def bytes(self, mark: Mark) -> int:
        return sum(change.size for change in self.changes if change.mark == mark)

    def under(self, path: str) -> LayerChanges:
        """Only the changes at or below absolute ``path``."""
        if path == "/":
            return self
        prefix = path.rstrip("/") + "/"
        kept = [c for c in self.changes if c.path == path or c.path.startswith(prefix)]
        return LayerChanges(self.first, self.last, kept)


def each_layer(layers: Iterable[Layer]) -> Iterator[LayerChanges]:
    """The changes of every layer, bottom first, folding the chain once."""
    builder = TreeBuilder()
    for index, layer in enumerate(layers):
        found = LayerChanges(
            index, index, sorted(_layer_changes(builder, layer.entries), key=lambda c: c.path)
        )
        builder.apply(layer)
        yield found


def one_layer(layers: list[Layer], index: int) -> LayerChanges:
    """The changes of layer ``index`` (the layers above it are never read)."""
    for found in each_layer(layers[: index + 1]):
        if found.first == index:
            return found
    raise AssertionError("unreachable: index checked by the caller")


def layer_range(layers: list[Layer], first: int, last: int) -> LayerChanges:
    """What layers ``first..last`` together changed against the layers below ``first``:
    the merged views before and after are compared (a path added then removed within the
    range is no change)."""
    lower = MergedTree.build(layers[:first])
    upper = MergedTree.build(layers[: last + 1])
    whiteouts, opaques = set(), set()
    for layer in layers[first : last + 1]:
        for entry in layer.entries:
            if entry.kind == "whiteout":
                whiteouts.add(entry.path)
            elif entry.kind == "dir" and entry.opaque:
                opaques.add(entry.path)
    changes = [
        *_added_or_modified(lower, upper, first),
        *_removed(lower, upper, whiteouts, opaques),
    ]
    return LayerChanges(first, last, sorted(changes, key=lambda c: c.path))


# --- one layer against the builder's view of the layers beneath ---------------------------


def _layer_changes(lower: TreeBuilder, entries: list[Entry]) -> Iterator[Change]:
    named = {e.path for e in entries if e.kind != "whiteout"}
    for entry in entries:
        if entry.kind == "whiteout":
            hidden = lower.lookup(entry.path)
            if hidden is not None:
                yield _removal(entry.path, hidden, "whiteout")
            continue
        if entry.kind == "dir" and entry.opaque:
            yield from _opaque_hides(lower.lookup(entry.path), entry.path, named)
        if entry.implicit and not entry.opaque:
            continue
        change = _compare(entry, lower.lookup(entry.path))
        if change is not None:
            yield change


def _compare(entry: Entry, old: Node | None) -> Change | None:
    path = "/" + entry.path
    if old is None:
        return Change(path, "added", entry.kind, _size(entry), opaque=entry.opaque)
    if entry.kind == "dir" and old.is_dir and not entry.opaque and _same_dir(entry, old):
        return None
    lower_size = subtree(old)[0] if old.is_dir else old.size
    return Change(
        path,
        "modified",
        entry.kind,
        _size(entry),
        opaque=entry.opaque,
        lower_layer=old.layer,
        lower_size=lower_size,
    )


def _opaque_hides(node: Node | None, path: str, named: set[str]) -> Iterator[Change]:
    if node is None or node.children is None:
        return
    for name, child in node.children.items():
        child_path = (
            f"{path}/{name.decode('utf-8', 'surrogateescape')}"
            if path
            else name.decode("utf-8", "surrogateescape")
        )
        if child_path not in named:
            yield _removal(child_path, child, "opaque")


def _removal(path: str, hidden: Node, cause: Cause) -> Change:
    size, count = subtree(hidden)
    return Change(
        "/" + path,
        "removed",
        node_kind(hidden),
        size,
        count,
        cause,
        lower_layer=hidden.layer,
        lower_size=size,
    )


def _same_dir(entry: Entry, node: Node) -> bool:
    xattrs = {k.encode("utf-8", "surrogateescape"): v for k, v in entry.xattrs.items()}
    return (
        node.mode & 0o7777 == entry.mode & 0o7777
        and node.uid == entry.uid
        and node.gid == entry.gid
        and (node.xattrs or {}) == xattrs
    )


def _size(entry: Entry) -> int:
    return entry.size if entry.kind in ("file", "hardlink") else 0


# --- two merged views compared (ranges) ---------------------------------------------------


def _added_or_modified(lower: MergedTree, upper: MergedTree, first: int) -> Iterator[Change]:
    for raw, node in upper.walk():
        if node.layer < first:
            continue  # provided beneath the range: unchanged
        path = raw.decode("utf-8", "surrogateescape")
        old = lower.lookup(path)
        kind = node_kind(node)
        size = node.size if kind == "file" else 0
        if old is None:
            yield Change("/" + path, "added", kind, size)
        elif not (old.is_dir and node.is_dir and _same_node_attrs(old, node)):
            lower_size = subtree(old)[0] if old.is_dir else old.size
            yield Change(
                "/" + path, "modified", kind, size, lower_layer=old.layer, lower_size=lower_size
            )


def _removed(
    lower: MergedTree, upper: MergedTree, whiteouts: set[str], opaques: set[str]
) -> Iterator[Change]:
    """Top-most lower paths missing above (a removed directory is one change)."""
    stack: list[tuple[str, Node]] = [("", lower.root)]
    while stack:
        path, node = stack.pop()
        for name, child in (node.children or {}).items():
            child_path = (
                f"{path}/{name.decode('utf-8', 'surrogateescape')}"
                if path
                else name.decode("utf-8", "surrogateescape")
            )
            if upper.lookup(child_path) is None:
                cause: Cause = (
                    "whiteout"
                    if child_path in whiteouts
                    else ("opaque" if path in opaques else "replaced")
                )
                yield _removal(child_path, child, cause)
            elif child.is_dir:
                stack.append((child_path, child))


def _same_node_attrs(a: Node, b: Node) -> bool:
    return (a.mode, a.uid, a.gid, a.xattrs or {}) == (b.mode, b.uid, b.gid, b.xattrs or {})


# --- nodes ------------------------------------------------------------------------------------


def node_kind(node: Node) -> str:
    """The index kind a merged node stands for (hard links show as the file they share)."""
    return kind_of_mode(node.mode)


def subtree(node: Node) -> tuple[int, int]:
    """(file bytes, entries) of ``node`` and everything below it; a file reached by several
    hard links counts once."""
    seen: set[int] = set()
    size = count = 0
    stack = [node]
    while stack:
        current = stack.pop()
        count += 1
        if current.children is not None:
            stack.extend(current.children.values())
        elif id(current) not in seen:
            seen.add(id(current))
            if current.source is not None:
                size += current.size
    return size, count
