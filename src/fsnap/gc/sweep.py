"""Sweep: the removals gc decided on, each one safe against a concurrent change.

Each function removes one thing and says whether it did. Something that changed since gc
looked (a snapshot that gained a child, a blob another gc removed, an ingest a writer
picked up) is left alone: gc is conservative, the next run will see it again.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path

from fsnap.content.store import INGEST_TABLE, ContentStore
from fsnap.content.writer import IngestStatus
from fsnap.errors import FailedPrecondition, NotFound
from fsnap.fdtree import remove_tree
from fsnap.locking import exclusive_if_free
from fsnap.snapshots.snapshotter import Snapshotter

ORPHAN_PREFIX = "orphan:"


def remove_blob(content: ContentStore, digest: str) -> bool:
    """Drop the blob's record, then its file (the order ``ContentStore.delete`` keeps)."""
    try:
        content.delete(digest)
    except NotFound:
        return False
    return True


def remove_snapshot(
    snapshots: Snapshotter, name: str, seen_updated: datetime | None = None
) -> bool:
    """Remove a committed snapshot; refused (False) if it gained a child meanwhile, or
    was updated since gc saw it at ``seen_updated`` (a pull touched it to reuse it)."""
    try:
        snapshots.remove(name, if_updated=seen_updated)
    except (NotFound, FailedPrecondition):
        return False
    return True


def snapshot_size(snapshots: Snapshotter, name: str) -> int:
    """Bytes a snapshot's own directory holds (0 if it is already gone)."""
    try:
        return snapshots.usage(name).size
    except NotFound:
        return 0


# -- ingests ---------------------------------------------------------------------------------


@contextlib.contextmanager
def idle_ingest(lock: Path) -> Iterator[bool]:
    """Hold an ingest's writer lock if no writer holds it (yields False if one does).

    The writer's lock protocol (``content.writer``): a live writer keeps an exclusive flock
    on its lock file from open to commit/close, so a lock we can take means nobody is
    writing, and holding it keeps a writer from starting while we remove its data.
    """
    with exclusive_if_free(lock) as free:
        yield free


def is_idle(lock: Path) -> bool:
    """Is the ingest lock ``lock`` free (no writer holds it) right now?"""
    with idle_ingest(lock) as idle:
        return idle


def dir_lock(ingest_dir: Path) -> Path:
    """The lock file of an ingest directory, for one whose ref is unknown (an orphan): the
    content store puts it next to the directory (``ContentStore.lock_path``)."""
    return ingest_dir.with_name(ingest_dir.name + ".lock")


def remove_ingest(content: ContentStore, ref: str) -> bool:
    """Drop an ingest's record and partial data unless a writer holds it right now."""
    with idle_ingest(content.lock_path(ref)) as idle:
        if not idle:
            return False
        content.db.delete(INGEST_TABLE, ref)
        content.remove_ingest_dir(ref)
        return True


def orphan_ingest_dirs(content: ContentStore, ingests: Iterable[IngestStatus]) -> list[Path]:
    """Ingest directories without a record among ``ingests`` (a writer crashed before its
    first status, or while forgetting): nothing can resume them."""
    known = _dir_names(content, ingests)
    return sorted(
        path for path in content.ingest_root.iterdir() if path.is_dir() and path.name not in known
    )


def remove_orphan_dir(content: ContentStore, path: Path) -> bool:
    """Remove an orphan ingest directory unless a writer took it up meanwhile."""
    with idle_ingest(dir_lock(path)) as idle:
        if not idle:
            return False
        # A writer may have opened, written its record and closed since we listed.
        if path.name in _dir_names(content, content.list_ingests()):
            return False
        with contextlib.suppress(OSError):
            remove_tree(path)
        return True


def _dir_names(content: ContentStore, ingests: Iterable[IngestStatus]) -> set[str]:
    return {content.ingest_dir(status.ref).name for status in ingests}


def dir_size(path: Path) -> int:
    """Bytes of the files directly in ``path`` (an ingest dir holds just ``data``)."""
    total = 0
    with contextlib.suppress(FileNotFoundError), os.scandir(path) as entries:
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                total += entry.stat(follow_symlinks=False).st_size
    return total
