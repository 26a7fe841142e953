"""Committing an active snapshot that a writable mount changed: scan, then commit.

A writable mount (``fsnap.mount.rwfs``) keeps only *overrides* in the snapshot's index
(what its directory cannot hold); the directory itself is the truth about everything
else. Before such a snapshot becomes a committed layer its directory is scanned, with the
overrides, into a full layer index, which the snapshotter stores in the commit's own
transaction (a failed commit leaves the overrides as they were). The snapshotter reads no
files itself, so this is the caller's step: the CLI's ``fsnap snapshots commit`` and any
Python caller that commits what a writable mount wrote.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping

from fsnap.diff.scan import scan_snapshot, without_sockets
from fsnap.snapshots.snapshotter import LocalSnapshotter


def commit_active(
    snapshots: LocalSnapshotter, name: str, key: str, labels: Mapping[str, str] | None = None
) -> list[str]:
    """Commit active ``key`` as ``name`` (``LocalSnapshotter.commit``), scanning its
    directory first when its index holds overrides only.

    Unix sockets a writable mount left in the directory are not content: they are left
    out of the index and removed from the directory; their paths are returned (for the
    caller to tell the user)."""
    overrides = snapshots.index.overrides(key)
    if overrides is None:
        snapshots.commit(name, key, labels)
        return []
    snapshots.check_holds(key, "commit")  # (before scanning what a mount still writes)
    fs_dir = snapshots.dir(key)
    entries, sockets = without_sockets(scan_snapshot(fs_dir, overrides))
    snapshots.commit(name, key, labels, index=entries)
    for path in sockets:
        with contextlib.suppress(OSError):  # the index no longer shows it anyway
            os.unlink(fs_dir / path)
    return sockets
