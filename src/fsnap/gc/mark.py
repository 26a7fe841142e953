"""Mark: everything reachable from the roots, over one graph of blobs and snapshots.

Nodes are ``("content", digest)`` and ``("snapshot", name)``. Edges, as containerd's gc
reads them from labels:

- a blob's ``containerd.io/gc.ref.content.*`` labels -> other blobs (index -> manifests,
  manifest -> config and layers);
- a blob's ``containerd.io/gc.ref.snapshot.fsnap`` label -> a snapshot (config -> the
  image's top chain ID);
- a snapshot -> its parent, and its own ``containerd.io/gc.ref.content.*`` labels -> blobs.

Roots (see ``roots``) come from images, live leases, mounts, active and view snapshots, and
the ``containerd.io/gc.root`` label. The walk looks things up in the candidate lists taken
at the start of gc and falls back to the stores for anything newer, so an image recorded
while gc runs still protects the older blobs it names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from fsnap.content.api import Info as BlobInfo
from fsnap.errors import NotFound
from fsnap.labels import CONTENT_REF, GC_ROOT
from fsnap.labels import SNAPSHOT_LABEL as SNAPSHOT_REF
from fsnap.snapshots.info import OWNER_LABEL, Kind
from fsnap.snapshots.info import Info as SnapshotInfo

CONTENT = "content"
SNAPSHOT = "snapshot"
Node = tuple[str, str]


@dataclass
class Graph:
    """The candidates gc listed, with fallbacks to the live stores for anything newer."""

    blobs: dict[str, BlobInfo]
    snapshots: dict[str, SnapshotInfo]
    blob_lookup: Callable[[str], BlobInfo]
    snapshot_lookup: Callable[[str], SnapshotInfo]

    def blob(self, digest: str) -> BlobInfo | None:
        found = self.blobs.get(digest)
        if found is not None:
            return found
        try:
            return self.blob_lookup(digest)
        except (NotFound, ValueError):  # gone, or a label that is not a digest
            return None

    def snapshot(self, name: str) -> SnapshotInfo | None:
        found = self.snapshots.get(name)
        if found is not None:
            return found
        try:
            return self.snapshot_lookup(name)
        except NotFound:
            return None

    def references(self, node: Node) -> Iterator[Node]:
        """The nodes ``node`` keeps alive."""
        kind, name = node
        if kind == CONTENT:
            blob = self.blob(name)
            if blob is not None:
                yield from _label_refs(blob.labels, follow_snapshots=True)
            return
        snapshot = self.snapshot(name)
        if snapshot is not None:
            if snapshot.parent:
                yield (SNAPSHOT, snapshot.parent)
            yield from _label_refs(snapshot.labels, follow_snapshots=False)


def _label_refs(labels: Mapping[str, str], follow_snapshots: bool) -> Iterator[Node]:
    for key, value in sorted(labels.items()):
        if key.startswith(CONTENT_REF):
            yield (CONTENT, value)
        elif follow_snapshots and (key == SNAPSHOT_REF or key.startswith(SNAPSHOT_REF + "/")):
            yield (SNAPSHOT, value)


def mark(graph: Graph, roots: Iterable[Node]) -> set[Node]:
    """Every node reachable from ``roots`` (the roots included)."""
    marked: set[Node] = set()
    stack = list(roots)
    while stack:
        node = stack.pop()
        if node in marked:
            continue
        marked.add(node)
        stack.extend(ref for ref in graph.references(node) if ref not in marked)
    return marked


@dataclass(frozen=True)
class RootSources:
    """What, besides labels, keeps things alive: image targets, snapshots read by mounts,
    and the moment since which live leases protect everything (None: no live lease)."""

    image_targets: Iterable[str]
    mounted_snapshots: Iterable[str]
    protected_since: float | None


def roots(graph: Graph, sources: RootSources) -> Iterator[Node]:
    """The gc roots, in containerd's spirit: images, leases, mounts, user snapshots."""
    for digest in sources.image_targets:
        yield (CONTENT, digest)
    for name in sources.mounted_snapshots:
        yield (SNAPSHOT, name)
    since = sources.protected_since
    for blob in graph.blobs.values():
        leased = since is not None and max(blob.created, blob.updated) >= since
        if leased or GC_ROOT in blob.labels:
            yield (CONTENT, blob.digest)
    for snapshot in graph.snapshots.values():
        if _snapshot_is_root(snapshot, since):
            yield (SNAPSHOT, snapshot.name)


def _snapshot_is_root(snapshot: SnapshotInfo, since: float | None) -> bool:
    """Active and view snapshots are the user's (they stay until removed, as in
    containerd); anything a live lease covers stays too."""
    if snapshot.kind is not Kind.COMMITTED or GC_ROOT in snapshot.labels:
        return True
    if OWNER_LABEL in snapshot.labels:  # containerd's, through ``fsnap serve``
        return True
    touched = max(snapshot.created, snapshot.updated).timestamp()
    return since is not None and touched >= since
