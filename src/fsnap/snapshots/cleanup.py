"""Recovery after a crash: reconcile snapshot directories with their LMDB records.

What a crash can leave, and what happens to it (see ``disk`` for the layout):

- ``new-*`` directories (a create that never published) and ``rm-*`` directories (a remove
  past its transaction): deleted.
- ``<id>/`` with no record (a remove that crashed between its txn and the rename): deleted.
- a record with no ``<id>/`` (a create that crashed between its txn and the rename): deleted
  if active or view (nothing depends on those). A committed snapshot is never dropped
  silently: it is reported in ``CleanupReport.missing`` and left for a person (or GC).

It also keeps every snapshot's own directory 0700 (``fsnap.private``). The whole pass is
one ``listdir``, a ``stat`` per snapshot and one read of the id table when nothing is wrong.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from fsnap.private import keep_private
from fsnap.snapshots import disk
from fsnap.snapshots.info import Kind
from fsnap.snapshots.metadata import Tables

log = logging.getLogger(__name__)


@dataclass
class CleanupReport:
    """What one cleanup pass did (``skipped``: another process was mid-change)."""

    removed_dirs: list[str] = field(default_factory=list)
    removed_keys: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    skipped: bool = False


def clean(root: Path, tables: Tables) -> CleanupReport:
    """One pass over ``root`` under the exclusive lock (skipped if it is taken)."""
    report = CleanupReport()
    with disk.cleanup_lock(root) as locked:
        if not locked:
            report.skipped = True
            return report
        names = os.listdir(root)
        owner = os.stat(root.parent)
        present = {int(n) for n in names if n.isdigit()}
        with tables.db.begin() as txn:
            ids = tables.all_ids(txn)
        _drop_orphan_records(tables, ids, present, report)
        for name in names:
            if _is_leftover(name, ids):
                if _remove_leftover(root / name):
                    report.removed_dirs.append(name)
            elif name.isdigit():
                keep_private(root / name, owner)
    return report


def _remove_leftover(path: Path) -> bool:
    """Remove one leftover directory; a failure is a warning (the next open tries again),
    never the failure of the command that happened to open the store."""
    try:
        disk.remove_tree(path)
    except OSError as exc:
        log.warning("cannot remove leftover snapshot directory %s: %s", path, exc)
        return False
    return True


def _is_leftover(name: str, ids: dict[int, str]) -> bool:
    if name.startswith((disk.NEW_PREFIX, disk.REMOVE_PREFIX)):
        return True
    return name.isdigit() and int(name) not in ids


def _drop_orphan_records(
    tables: Tables, ids: dict[int, str], present: set[int], report: CleanupReport
) -> None:
    """Delete active/view records whose directory is gone; list committed ones."""
    orphans = {i: key for i, key in ids.items() if i not in present}
    if not orphans:
        return
    with tables.db.begin(write=True) as txn:
        for snapshot_id, key in sorted(orphans.items()):
            record = tables.get(txn, key)
            if record is None or record.id != snapshot_id:
                continue
            if record.kind is Kind.COMMITTED or tables.has_children(txn, key):
                report.missing.append(key)
                continue
            tables.delete(txn, key, record)
            report.removed_keys.append(key)
