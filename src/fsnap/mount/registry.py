"""Which active snapshots are mounted writable, and where: a ``Hold`` on the snapshotter.

One LMDB table in the store's environment, ``snapshots.mounted``: snapshot key -> mount
point. ``fsnap.mount.manager`` records a writable mount before starting it and drops the
record when it ends (``umount``, or the daemon as it exits). The snapshotter is given
this registry as a hold (``fsnap.snapshots.api.Hold``) and asks it inside its own
transaction, so committing or removing a snapshot a mount is still writing into is
refused, and recording a mount races with neither.
"""

from __future__ import annotations

import lmdb

from fsnap.db import Database
from fsnap.errors import FailedPrecondition
from fsnap.snapshots.metadata import Tables

MOUNTED = "snapshots.mounted"


class WritableMounts:
    """The writable mounts recorded in ``db`` (one per snapshot at most)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._records = Tables(db)
        # (named tables are opened before any transaction may use them)
        self._table = db.table(MOUNTED)

    def set(self, key: str, mountpoint: str | None) -> None:
        """Record that active ``key`` is mounted writable at ``mountpoint`` (None: no
        longer). A second writable mount of one snapshot is refused, naming the first."""
        with self.db.begin(write=True) as txn:
            if mountpoint is None:
                txn.delete(key.encode(), db=self._table)
                return
            self._records.find_active(txn, key)
            current = txn.get(key.encode(), db=self._table)
            if current is not None and bytes(current).decode() != mountpoint:
                raise FailedPrecondition(
                    f"snapshot {key} is already mounted writable at {bytes(current).decode()}"
                )
            txn.put(key.encode(), mountpoint.encode(), db=self._table)

    def release_at(self, mountpoint: str) -> list[str]:
        """Drop every record of a writable mount at ``mountpoint`` (its starter died
        before the mount's own record was written); the keys released."""
        with self.db.begin(write=True) as txn:
            keys = [
                bytes(k).decode()
                for k, v in txn.cursor(db=self._table)
                if bytes(v).decode() == mountpoint
            ]
            for key in keys:
                txn.delete(key.encode(), db=self._table)
        return keys

    def at(self, key: str) -> str | None:
        """Where active ``key`` is mounted writable, or None."""
        with self.db.begin() as txn:
            raw = txn.get(key.encode(), db=self._table)
        return None if raw is None else bytes(raw).decode()

    def check(self, txn: lmdb.Transaction, key: str, action: str) -> None:
        """The ``Hold``: FailedPrecondition if ``key`` is mounted writable."""
        raw = txn.get(key.encode(), db=self._table)
        if raw is not None:
            mnt = bytes(raw).decode()
            raise FailedPrecondition(
                f"cannot {action} snapshot {key}: it is mounted writable at {mnt}; "
                f"run `fsnap umount {mnt}` first"
            )
