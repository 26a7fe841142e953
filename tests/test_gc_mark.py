"""gc's mark phase on its own graph: which labels are edges, which records are roots, and
the fallback to the live stores for what changed after gc listed its candidates.

``test_gc`` runs the whole collector on real stores; a race between listing and marking
(an image recorded, a snapshot removed meanwhile) cannot be timed there, so here the
lookups are plain functions over dicts standing for the live stores.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from fsnap.content.api import Info as BlobInfo
from fsnap.errors import NotFound
from fsnap.gc.mark import (
    Graph,
    RootSources,
    mark,
    roots,
)
from fsnap.labels import CONTENT_REF, GC_ROOT
from fsnap.labels import SNAPSHOT_LABEL as SNAPSHOT_REF
from fsnap.snapshots.info import OWNER_LABEL, Kind
from fsnap.snapshots.info import Info as SnapshotInfo

pytestmark = pytest.mark.timeout(60)

D = {name: "sha256:" + name * 64 for name in "abcdef"}


def blob(name: str, labels: dict[str, str] | None = None, at: float = 100.0) -> BlobInfo:
    return BlobInfo(D[name], 1, at, at, labels or {})


def snap(
    name: str,
    parent: str = "",
    kind: Kind = Kind.COMMITTED,
    labels: dict[str, str] | None = None,
    at: float = 100.0,
) -> SnapshotInfo:
    when = datetime.fromtimestamp(at, UTC)
    return SnapshotInfo(name, kind, parent, labels or {}, when, when)


def graph(
    blobs: list[BlobInfo],
    snapshots: list[SnapshotInfo],
    live_blobs: Sequence[BlobInfo] = (),
    live_snapshots: Sequence[SnapshotInfo] = (),
) -> Graph:
    """Candidates as listed, and the live stores (what exists now) behind the lookups."""
    live_b = {b.digest: b for b in live_blobs}
    live_s = {s.name: s for s in live_snapshots}

    def blob_lookup(digest: str) -> BlobInfo:
        if digest not in live_b:
            raise NotFound(digest)
        return live_b[digest]

    def snapshot_lookup(name: str) -> SnapshotInfo:
        if name not in live_s:
            raise NotFound(name)
        return live_s[name]

    return Graph(
        {b.digest: b for b in blobs}, {s.name: s for s in snapshots}, blob_lookup, snapshot_lookup
    )


def test_labels_are_the_edges() -> None:
    index = blob("a", {CONTENT_REF + "m.0": D["b"], "other": D["c"]})
    manifest = blob("b", {CONTENT_REF + "config": D["d"], CONTENT_REF + "l.0": D["e"]})
    config = blob(
        "d", {SNAPSHOT_REF: "top", SNAPSHOT_REF + "/extra": "x", SNAPSHOT_REF + "-not": "y"}
    )
    top = snap("top", parent="base", labels={CONTENT_REF + "note": D["f"], SNAPSHOT_REF: "never"})
    g = graph(
        [index, manifest, config, blob("c"), blob("e"), blob("f")],
        [top, snap("base"), snap("x"), snap("y"), snap("never")],
    )
    assert mark(g, [("content", D["a"])]) == {
        ("content", D["a"]),
        ("content", D["b"]),
        ("content", D["d"]),
        ("content", D["e"]),
        ("snapshot", "top"),
        ("snapshot", "x"),
        ("snapshot", "base"),
        ("content", D["f"]),
    }


def test_what_appeared_after_the_listing_is_looked_up_live() -> None:
    """An image recorded while gc runs: its config and snapshot are not candidates, yet
    they must protect the older layer blob and parent snapshot they name."""
    config = blob("d", {SNAPSHOT_REF: "new", CONTENT_REF + "l": D["e"]})
    g = graph(
        [blob("e")],
        [snap("base")],
        live_blobs=[config, blob("e")],
        live_snapshots=[snap("new", parent="base")],
    )
    assert mark(g, [("content", D["d"])]) == {
        ("content", D["d"]),
        ("content", D["e"]),
        ("snapshot", "new"),
        ("snapshot", "base"),
    }
    assert mark(g, [("content", "not-a-digest"), ("snapshot", "gone")]) == {
        ("content", "not-a-digest"),
        ("snapshot", "gone"),
    }


def test_candidates_are_used_as_listed() -> None:
    """A candidate removed from the live store since the listing still leads to what it
    named (no lookup for it): marking never loses an edge to a race."""
    config = blob("d", {SNAPSHOT_REF: "top"})
    g = graph(
        [config, blob("e")],
        [snap("top", parent="base", labels={CONTENT_REF: D["e"]}), snap("base")],
    )
    assert mark(g, [("content", D["d"])]) == {
        ("content", D["d"]),
        ("snapshot", "top"),
        ("snapshot", "base"),
        ("content", D["e"]),
    }


def test_roots() -> None:
    blobs = [
        blob("a", at=50.0),
        blob("b", at=100.0),
        blob("c", at=99.0),
        blob("d", {GC_ROOT: "1"}, at=10.0),
        blob("e", at=10.0),
    ]
    snapshots = [
        snap("committed-old", at=10.0),
        snap("committed-new", at=100.0),
        snap("active", kind=Kind.ACTIVE, at=10.0),
        snap("view", kind=Kind.VIEW, at=10.0),
        snap("pinned", labels={GC_ROOT: ""}, at=10.0),
        snap("containerd", labels={OWNER_LABEL: "x"}, at=10.0),
    ]
    g = graph(blobs, snapshots)
    sources = RootSources([D["a"]], ["mounted"], protected_since=100.0)
    with pytest.raises(dataclasses.FrozenInstanceError):  # gc's inputs, fixed for one run
        sources.protected_since = None  # type: ignore[misc]
    leased = set(roots(g, sources))
    assert leased == {
        ("content", D["a"]),
        ("content", D["b"]),
        ("content", D["d"]),
        ("snapshot", "mounted"),
        ("snapshot", "committed-new"),
        ("snapshot", "active"),
        ("snapshot", "view"),
        ("snapshot", "pinned"),
        ("snapshot", "containerd"),
    }
    unleased = set(roots(g, RootSources([], [], protected_since=None)))
    assert unleased == {
        ("content", D["d"]),
        ("snapshot", "active"),
        ("snapshot", "view"),
        ("snapshot", "pinned"),
        ("snapshot", "containerd"),
    }
