"""Garbage collection: mark and sweep in containerd's order (``fsnap gc``).

``collect(stores)`` first lists the candidates (blobs, snapshots, ingests), then reads what
keeps things alive (leases, images, mounts), marks everything reachable (``mark``), and
sweeps the rest (``sweep``): committed snapshots children first, then blobs, then ingests no
writer holds, then stale leases. Listing candidates *before* roots is what makes gc safe
next to a running pull: whatever is created after the listing is not a candidate, and an
image recorded after it is seen as a root. See ``fsnap.leases`` for the lease rule.

``rmi`` only forgets an image record; this is what then reclaims its blobs and snapshots
(unless another image, a mount, a user snapshot or a live lease still holds them).
``fsnap.Client.gc`` is the verb: it first reaps dead ``fsnap run``s (their mounts and
snapshots go too), then collects over the client's stores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fsnap import leases
from fsnap.gc import mark, sweep
from fsnap.snapshots.info import Kind

if TYPE_CHECKING:
    from fsnap.content.store import ContentStore
    from fsnap.db import Database
    from fsnap.images.store import ImageStore
    from fsnap.snapshots.snapshotter import LocalSnapshotter

BLOB = "blob"
SNAPSHOT = "snapshot"
INGEST = "ingest"
LEASE = "lease"
KINDS = (SNAPSHOT, BLOB, INGEST, LEASE)


@dataclass(frozen=True)
class Stores:
    """What gc reads and removes from. ``db`` holds the leases; ``mounted`` answers, when
    gc asks (after listing candidates), which snapshots mounts read (they are roots)."""

    content: ContentStore
    images: ImageStore
    snapshots: LocalSnapshotter
    db: Database
    mounted: Callable[[], set[str]]


@dataclass(frozen=True)
class Removal:
    """One thing gc removes (or, in a dry run, would): its kind, name and bytes."""

    kind: str
    name: str
    size: int = 0
    detail: str = ""
    # A snapshot's last update as gc saw it: removed only if still so (a pull reusing it
    # touches it; see ``LocalSnapshotter.touch``). Not part of the report.
    seen_updated: datetime | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "size": self.size, "detail": self.detail}


@dataclass
class GCReport:
    """What a gc run removed, in sweep order; ``skipped`` changed under gc and stays."""

    dry_run: bool
    removed: list[Removal] = field(default_factory=list)
    skipped: list[Removal] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[Removal]:
        return [item for item in self.removed if item.kind == kind]

    @property
    def counts(self) -> dict[str, int]:
        return {kind: len(self.of_kind(kind)) for kind in KINDS}

    @property
    def bytes_reclaimed(self) -> int:
        return sum(item.size for item in self.removed)

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "removed": [item.to_json() for item in self.removed],
            "skipped": [item.to_json() for item in self.skipped],
            "counts": self.counts,
            "bytes_reclaimed": self.bytes_reclaimed,
        }


def collect(stores: Stores, dry_run: bool = False) -> GCReport:
    """Remove what nothing references; with ``dry_run``, only say what would go."""
    plan = plan_removals(stores)
    report = GCReport(dry_run=dry_run)
    if dry_run:
        report.removed = plan
        return report
    for item in plan:
        (report.removed if _remove(stores, item) else report.skipped).append(item)
    return report


def plan_removals(stores: Stores) -> list[Removal]:
    """Everything gc would remove now, in the order it removes it."""
    content, snapshots = stores.content, stores.snapshots
    graph = mark.Graph(
        blobs={info.digest: info for info in content.walk()},
        snapshots={info.name: info for info in snapshots.walk()},
        blob_lookup=content.info,
        snapshot_lookup=snapshots.stat,
    )
    ingests = content.list_ingests()
    orphans = content.ingests.orphans()
    all_leases = leases.list_leases(stores.db)
    since = leases.protected_since(all_leases)
    sources = mark.RootSources(
        image_targets=[image.target.digest for image in stores.images.list()],
        mounted_snapshots=stores.mounted(),
        protected_since=since,
    )
    marked = mark.mark(graph, mark.roots(graph, sources))
    plan = _doomed_snapshots(snapshots, graph, marked)
    plan += [
        Removal(BLOB, digest, info.size)
        for digest, info in sorted(graph.blobs.items())
        if (mark.CONTENT, digest) not in marked
    ]
    plan += [
        Removal(INGEST, status.ref, status.offset, status.expected)
        for status in ingests
        if not _leased(max(status.started, status.updated), since)
        and content.ingests.is_idle(status.ref)
    ]
    plan += [
        Removal(INGEST, sweep.ORPHAN_PREFIX + orphan.name, orphan.size)
        for orphan in orphans
        if not _leased(orphan.mtime, since)
    ]
    plan += [
        Removal(LEASE, lease.id, 0, f"pid {lease.pid}: {lease.reason}")
        for lease in all_leases
        if not lease.is_live()
    ]
    return plan


def _doomed_snapshots(
    snapshots: LocalSnapshotter, graph: mark.Graph, marked: set[mark.Node]
) -> list[Removal]:
    """Unmarked committed snapshots, deepest first so children go before their parents.

    Marking keeps whole chains (a marked child marks its parent), so the unmarked set is
    closed under "child of": removing it in this order never meets a child that stays.
    """
    doomed = [
        info.name
        for info in graph.snapshots.values()
        if info.kind is Kind.COMMITTED and (mark.SNAPSHOT, info.name) not in marked
    ]
    depth = {name: _depth(graph, name) for name in doomed}
    doomed.sort(key=lambda name: (-depth[name], name))
    return [
        Removal(
            SNAPSHOT,
            name,
            sweep.snapshot_size(snapshots, name),
            seen_updated=graph.snapshots[name].updated,
        )
        for name in doomed
    ]


def _depth(graph: mark.Graph, name: str) -> int:
    depth, seen = 0, set()
    info = graph.snapshots.get(name)
    while info is not None and info.parent and info.parent not in seen:
        seen.add(info.parent)
        depth += 1
        info = graph.snapshots.get(info.parent)
    return depth


def _leased(touched: float, since: float | None) -> bool:
    return since is not None and touched >= since


def _remove(stores: Stores, item: Removal) -> bool:
    content = stores.content
    if item.kind == SNAPSHOT:
        return sweep.remove_snapshot(stores.snapshots, item.name, item.seen_updated)
    if item.kind == BLOB:
        return sweep.remove_blob(content, item.name)
    if item.kind == INGEST:
        return sweep.remove_ingest(content, item.name)
    return leases.delete(stores.db, item.name)
