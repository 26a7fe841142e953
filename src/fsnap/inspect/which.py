"""Which layer provides a path, which versions it shadows, and what hid it if it is gone.

The merged tree (the mount's own) says whether the path is visible and from which layer;
the indexes, read bottom to top, say what every layer did to it: stored a version, or
removed it by a whiteout of the path or of a parent, an opaque parent, or a parent replaced
by something that is not a directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fsnap.archive.entry import Entry
from fsnap.mount.tree import Layer, MergedTree

Action = Literal["added", "modified", "removed"]


@dataclass(frozen=True)
class Sighting:
    """What one layer did to the path. For ``removed``: ``cause`` (whiteout, opaque,
    replaced) and ``by`` (the absolute path of the whiteout target or the parent)."""

    layer: int
    action: Action
    kind: str
    size: int
    cause: str = ""
    by: str = ""


@dataclass
class Which:
    """The answer for one path. ``provider``: the layer the merged view takes it from;
    ``shadowed``: lower layers whose versions that one hides; ``hidden_by``: the removal
    that made it disappear (when it is not present but some layer had it)."""

    path: str
    present: bool
    provider: int | None
    kind: str | None
    sightings: list[Sighting] = field(default_factory=list)
    shadowed: list[int] = field(default_factory=list)
    hidden_by: Sighting | None = None


def which(layers: list[Layer], inner: str) -> Which:
    """Answer for ``inner`` (a path as the indexes spell it: no leading slash)."""
    merged = MergedTree.build(layers)
    node = merged.lookup(inner)
    sightings: list[Sighting] = []
    exists = False
    for index, layer in enumerate(layers):
        by_path = {entry.path: entry for entry in layer.entries}
        entry = by_path.get(inner)
        if exists:
            removal = _removal(index, inner, by_path, entry)
            if removal is not None:
                sightings.append(removal)
                exists = False
        if entry is None or entry.kind == "whiteout" or (entry.implicit and exists):
            continue
        size = entry.size if entry.kind in ("file", "hardlink") else 0
        sightings.append(Sighting(index, "modified" if exists else "added", entry.kind, size))
        exists = True
    answer = Which("/" + inner, node is not None, None, None, sightings)
    if node is not None:
        answer.provider = node.layer
        answer.kind = next((s.kind for s in reversed(sightings) if s.action != "removed"), "dir")
        answer.shadowed = [
            s.layer for s in sightings if s.action != "removed" and s.layer < node.layer
        ]
    else:
        answer.hidden_by = next((s for s in reversed(sightings) if s.action == "removed"), None)
    return answer


def _removal(
    index: int, inner: str, by_path: dict[str, Entry], own: Entry | None
) -> Sighting | None:
    """How layer ``index`` removes ``inner`` from beneath, if it does."""
    parts = inner.split("/") if inner else []
    for depth in range(1, len(parts) + 1):
        ancestor = "/".join(parts[:depth])
        entry = by_path.get(ancestor)
        if entry is None:
            continue
        if entry.kind == "whiteout":
            return Sighting(index, "removed", "whiteout", 0, "whiteout", "/" + ancestor)
        if depth == len(parts):
            break
        if entry.kind == "dir" and entry.opaque and own is None:
            return Sighting(index, "removed", "dir", 0, "opaque", "/" + ancestor)
        if entry.kind not in ("dir", "whiteout"):
            return Sighting(index, "removed", entry.kind, 0, "replaced", "/" + ancestor)
    return None
