"""Sweep: the removals gc decided on, each one safe against a concurrent change.

Each function removes one thing and says whether it did. Something that changed since gc
looked (a snapshot that gained a child, a blob another gc removed, an ingest a writer
picked up) is left alone: gc is conservative, the next run will see it again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from fsnap.content.store import INGEST_TABLE, ContentStore
from fsnap.errors import FailedPrecondition, NotFound
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


def remove_snapshot(snapshots: Snapshotter, name: str) -> bool:
    """Remove a committed snapshot; refused (False) if it gained a child meanwhile."""
    try:
        snapshots.remove(name)
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
def idle_ingest(content: ContentStore, lock_name: str) -> Iterator[bool]:
    """Hold the ingest's writer lock if no writer holds it (yields False if one does).

    The writer's lock protocol (``content.writer``): a live writer keeps an exclusive flock
    on ``<hash>.lock`` from open to commit/close, so a lock we can take means nobody is
    writing, and holding it keeps a writer from starting while we remove its data.
    """
    with exclusive_if_free(content.ingest_root / lock_name) as free:
        yield free


def ingest_hash(ref: str) -> str:
    """The name of ``ref``'s directory and lock file (refs are free text)."""
    return hashlib.sha256(ref.encode()).hexdigest()


def remove_ingest(content: ContentStore, ref: str) -> bool:
    """Drop an ingest's record and partial data unless a writer holds it right now."""
    with idle_ingest(content, lock_name(ref)) as idle:
        if not idle:
            return False
        content.db.delete(INGEST_TABLE, ref)
        content.remove_ingest_dir(ref)
        return True


def is_idle(content: ContentStore, lock_name: str) -> bool:
    """Is the ingest lock ``lock_name`` free (no writer holds it) right now?"""
    with idle_ingest(content, lock_name) as idle:
        return idle


def lock_name(ref: str) -> str:
    return ingest_hash(ref) + ".lock"


def orphan_ingest_dirs(content: ContentStore) -> list[Path]:
    """Ingest directories without a record (a writer crashed before its first status, or
    while forgetting): nothing can resume them."""
    known = {ingest_hash(status.ref) for status in content.list_ingests()}
    return sorted(
        path for path in content.ingest_root.iterdir() if path.is_dir() and path.name not in known
    )


def remove_orphan_dir(content: ContentStore, path: Path) -> bool:
    """Remove an orphan ingest directory unless a writer took it up meanwhile."""
    with idle_ingest(content, path.name + ".lock") as idle:
        if not idle:
            return False
        # A writer may have opened, written its record and closed since we listed.
        if path.name in {ingest_hash(s.ref) for s in content.list_ingests()}:
            return False
        shutil.rmtree(path, ignore_errors=True)
        return True


def dir_size(path: Path) -> int:
    """Bytes of the files directly in ``path`` (an ingest dir holds just ``data``)."""
    total = 0
    with contextlib.suppress(FileNotFoundError), os.scandir(path) as entries:
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                total += entry.stat(follow_symlinks=False).st_size
    return total
