"""Directory work of the snapshotter: staging, removal, disk usage, and the cleanup lock.

On-disk layout under the snapshotter root::

    <root>/<id>/fs        the snapshot's own contents (its layer diff, or an active upper)
    <root>/<id>/work      overlay work dir, for active snapshots only
    <root>/new-<random>/  being created: not yet in LMDB, or in LMDB but not yet renamed
    <root>/rm-<id>/       being removed: already gone from LMDB
    <root>/lock           flock: shared while a change is in flight, exclusive for cleanup

A directory becomes visible under its id only after its metadata committed, and leaves its
id only after its metadata is gone, so whatever a crash leaves behind is recognisable by
name or by the absence of metadata.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from fsnap.fdtree import allocated
from fsnap.fdtree import remove_tree as remove_tree
from fsnap.locking import exclusive_if_free
from fsnap.snapshots.info import Usage

log = logging.getLogger(__name__)

NEW_PREFIX = "new-"
REMOVE_PREFIX = "rm-"
LOCK_NAME = "lock"
FS = "fs"
WORK = "work"


@contextlib.contextmanager
def change_lock(root: Path) -> Iterator[None]:
    """Hold a shared lock while one change (directory ops + its txn) is in flight.

    Changes run concurrently with each other (LMDB orders their transactions); only
    ``cleanup`` excludes them, so it never mistakes a change half-done by a live process for
    the remains of a crashed one. flock is per open file, so each change opens its own.
    """
    fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def cleanup_lock(root: Path) -> Iterator[bool]:
    """Try to take the exclusive lock without waiting; yields whether we got it.

    If another process is mid-change, cleanup is skipped rather than waited for: that
    process's own (or the next) open will clean up.
    """
    with exclusive_if_free(root / LOCK_NAME, 0o644) as free:
        yield free


def stage_new(root: Path, with_work: bool) -> Path:
    """Create ``root/new-<random>/fs`` (mode 0755, whatever the umask) and maybe ``work``."""
    staging = root / f"{NEW_PREFIX}{secrets.token_hex(8)}"
    staging.mkdir(mode=0o700)
    (staging / FS).mkdir()
    os.chmod(staging / FS, 0o755)
    if with_work:
        (staging / WORK).mkdir(mode=0o700)
    return staging


def publish(staging: Path, final: Path) -> None:
    """Move a staged directory to its id. A directory already there has no metadata (ids
    are never reused), so it is a leftover and goes first."""
    if final.exists():
        remove_tree(final)
    os.rename(staging, final)


def retire(root: Path, snapshot_id: int) -> None:
    """Rename ``root/<id>`` to ``root/rm-<id>`` and delete it (the rename is the commit
    point: a crash after it leaves an ``rm-`` directory that cleanup finishes)."""
    current = root / str(snapshot_id)
    doomed = root / f"{REMOVE_PREFIX}{snapshot_id}"
    try:
        os.rename(current, doomed)
    except FileNotFoundError:
        return
    try:
        remove_tree(doomed)
    except OSError as exc:  # the record is gone already: cleanup finishes the directory
        log.warning("cannot remove %s now (cleanup will): %s", doomed, exc)


def disk_usage(path: Path) -> Usage:
    """Bytes allocated and inodes used under ``path`` (itself included), hard links once."""
    size, inodes = allocated(path)
    return Usage(size=size, inodes=inodes)
