"""The merged tree with each entry's layer (``fsnap tree``) and disk usage (``fsnap du``).

Both walk the mount's merged tree, whose nodes know the layer they come from; ``--layer``
lists one layer's index instead. Sizes are file content bytes (a hard-linked file once).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from fsnap.errors import InvalidArgument, NotFound
from fsnap.inspect.changes import node_kind
from fsnap.mount.tree import Layer, MergedTree, Node


@dataclass(frozen=True)
class TreeRow:
    """One listed entry. ``mark`` is set in a single layer's listing: ``whiteout``,
    ``opaque`` or ``implicit``."""

    path: str
    depth: int
    kind: str
    size: int
    layer: int
    link: str = ""
    mark: str = ""


@dataclass(frozen=True)
class DirUsage:
    """A directory of the merged view: content bytes and entries below it (itself excluded)."""

    path: str
    depth: int
    size: int
    entries: int


@dataclass(frozen=True)
class LayerUsage:
    """Bytes under the path a layer stores, and how many of them the merged view shows."""

    layer: int
    chain_id: str
    stored: int
    visible: int


def merged_rows(layers: list[Layer], inner: str, depth: int | None) -> list[TreeRow]:
    """The merged tree at ``inner``, sorted, down to ``depth`` levels (None: all)."""
    merged = MergedTree.build(layers)
    top = _existing(merged, inner)
    return list(_rows(top, "/" + inner if inner else "", 0, depth))


def _rows(node: Node, path: str, level: int, depth: int | None) -> Iterator[TreeRow]:
    yield _row(node, path or "/", level)
    if node.children is None or (depth is not None and level >= depth):
        return
    for name in sorted(node.children):
        child = node.children[name]
        yield from _rows(
            child, f"{path}/{name.decode('utf-8', 'surrogateescape')}", level + 1, depth
        )


def _row(node: Node, path: str, level: int) -> TreeRow:
    kind = node_kind(node)
    link = node.link.decode("utf-8", "surrogateescape") if node.link else ""
    return TreeRow(path, level, kind, node.size if kind == "file" else 0, node.layer, link)


def layer_rows(layers: list[Layer], index: int, inner: str, depth: int | None) -> list[TreeRow]:
    """Layer ``index``'s own entries at or under ``inner`` (whiteouts included), sorted."""
    base = inner.count("/") + 1 if inner else 0
    rows = []
    for entry in sorted(layers[index].entries, key=lambda e: e.path):
        if inner and entry.path != inner and not entry.path.startswith(inner + "/"):
            continue
        level = (entry.path.count("/") + 1 if entry.path else 0) - base
        if depth is not None and level > depth:
            continue
        mark = (
            "whiteout"
            if entry.kind == "whiteout"
            else ("opaque" if entry.opaque else ("implicit" if entry.implicit else ""))
        )
        size = entry.size if entry.kind in ("file", "hardlink") else 0
        rows.append(TreeRow("/" + entry.path, level, entry.kind, size, index, entry.link, mark))
    return rows


def disk_usage(
    layers: list[Layer], names: list[str], inner: str, depth: int
) -> tuple[list[DirUsage], list[LayerUsage]]:
    """Per directory of the merged view under ``inner`` (to ``depth``), and per layer."""
    merged = MergedTree.build(layers)
    top = _existing(merged, inner)
    if top.children is None:
        raise InvalidArgument(f"/{inner} is not a directory")
    dirs: list[DirUsage] = []
    visible = [0] * len(layers)
    seen: set[int] = set()
    _dir_usage(top, "/" + inner, 0, depth, dirs, visible, seen)
    dirs.sort(key=lambda d: d.path)
    per_layer = []
    for index, layer in enumerate(layers):
        stored = sum(e.size for e in layer.entries if e.kind == "file" and _under(e.path, inner))
        per_layer.append(LayerUsage(index, names[index], stored, visible[index]))
    return dirs, per_layer


def _dir_usage(
    node: Node,
    path: str,
    level: int,
    depth: int,
    out: list[DirUsage],
    visible: list[int],
    seen: set[int],
) -> tuple[int, int]:
    """Post-order: (bytes, entries) below ``node``; directories to ``depth`` go to ``out``."""
    size = entries = 0
    assert node.children is not None
    for name, child in node.children.items():
        entries += 1
        if child.children is not None:
            child_path = f"{path.rstrip('/')}/{name.decode('utf-8', 'surrogateescape')}"
            sub_size, sub_entries = _dir_usage(
                child, child_path, level + 1, depth, out, visible, seen
            )
            size += sub_size
            entries += sub_entries
        elif child.source is not None and id(child) not in seen:
            seen.add(id(child))
            size += child.size
            if 0 <= child.layer < len(visible):
                visible[child.layer] += child.size
    if level <= depth:
        out.append(DirUsage(path or "/", level, size, entries))
    return size, entries


def _under(path: str, inner: str) -> bool:
    return not inner or path == inner or path.startswith(inner + "/")


def _existing(merged: MergedTree, inner: str) -> Node:
    node = merged.lookup(inner)
    if node is None:
        raise NotFound(f"/{inner} does not exist in the merged view")
    return node
