"""Sweep: the removals gc decided on, each one safe against a concurrent change.

Each function removes one thing and says whether it did. Something that changed since gc
looked (a snapshot that gained a child, a blob another gc removed, an ingest a writer
picked up) is left alone: gc is conservative, the next run will see it again.
"""

from __future__ import annotations

from datetime import datetime

from fsnap.content.store import ContentStore
from fsnap.errors import FailedPrecondition, NotFound
from fsnap.snapshots.snapshotter import LocalSnapshotter

ORPHAN_PREFIX = "orphan:"


def remove_blob(content: ContentStore, digest: str) -> bool:
    """Drop the blob's record, then its file (the order ``ContentStore.delete`` keeps)."""
    try:
        content.delete(digest)
    except NotFound:
        return False
    return True


def remove_snapshot(
    snapshots: LocalSnapshotter, name: str, seen_updated: datetime | None = None
) -> bool:
    """Remove a committed snapshot; refused (False) if it gained a child meanwhile, or
    was updated since gc saw it at ``seen_updated`` (a pull touched it to reuse it)."""
    try:
        snapshots.remove(name, if_updated=seen_updated)
    except (NotFound, FailedPrecondition):
        return False
    return True


def snapshot_size(snapshots: LocalSnapshotter, name: str) -> int:
    """Bytes a snapshot's own directory holds (0 if it is already gone)."""
    try:
        return snapshots.usage(name).size
    except NotFound:
        return 0


# -- ingests ---------------------------------------------------------------------------------
# The content store owns ingest state and its lock protocol (``fsnap.content.ingest``); gc
# names an orphan directory (one without a record) ``orphan:<directory name>``.


def remove_ingest(content: ContentStore, name: str) -> bool:
    """Remove the ingest (or ``orphan:`` directory) ``name`` unless a writer holds it."""
    if name.startswith(ORPHAN_PREFIX):
        return content.ingests.remove_orphan_if_idle(name.removeprefix(ORPHAN_PREFIX))
    return content.ingests.remove_if_idle(name)
