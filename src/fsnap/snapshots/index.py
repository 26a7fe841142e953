"""The per-layer index: every entry of one snapshot's own layer, in LMDB.

A snapshot's directory holds its files; its index holds what a merged view needs to know
about each of them (kind, mode, owner, times, size, whiteouts, opaque directories) without
touching the directory, plus what the directory cannot hold (the owner of a file an
unprivileged mount created). It lives in the ``files`` table of the snapshotter's LMDB
environment, keyed by snapshot id (see ``metadata``), so a commit keeps it and a remove
drops it in the same transaction as the snapshot's record.

An index is one of two things:

- a **full layer index**: written once by whoever filled an active snapshot (an unpack, a
  commit's re-apply, containerd's applier through ``fsnap serve``), then committed with
  it and immutable from then on;
- **overrides only**: an active snapshot served by a writable mount records just the
  metadata its directory cannot hold (``use_overrides``, then ``put_override`` /
  ``delete_override`` as the mount changes files). Such an index is not a layer index:
  before the snapshot is committed its directory is scanned (with these overrides) into a
  full one, by the caller (``fsnap.diff.active``), and handed to
  ``LocalSnapshotter.commit``, which stores it in the commit's own transaction.

The ``snapshots.overrides`` table marks the ids whose index is overrides only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import lmdb

from fsnap.archive.entry import Entry
from fsnap.errors import FailedPrecondition
from fsnap.snapshots.metadata import (
    Tables,
    hashed_scan_start,
    index_key,
    index_prefix,
    is_hashed,
)

# Ids of active snapshots whose index holds only overrides (decimal ASCII -> b"").
OVERRIDES = "snapshots.overrides"


class LayerIndex:
    """Read and write the layer indexes of the snapshots in ``tables``."""

    def __init__(self, tables: Tables) -> None:
        self.tables = tables
        self.db = tables.db
        # (named tables are opened before any transaction may use them)
        self._overrides = tables.db.table(OVERRIDES)

    # -- a full layer index ----------------------------------------------------------------

    def write(
        self, key: str, entries: Iterable[Entry], stored: Iterable[bytes] | None = None
    ) -> None:
        """Replace active ``key``'s index with ``entries`` (a later duplicate path wins),
        in one transaction. Committed snapshots are immutable, so is their index.
        ``stored``: the entries' ``to_bytes()`` when the caller has them already."""
        with self.db.begin(write=True) as txn:
            record = self.tables.find_active(txn, key)
            self.replace(txn, record.id, entries, stored)

    def read(self, key: str) -> list[Entry]:
        """``key``'s index ordered by path bytes (the root ``""`` first)."""
        with self.db.begin() as txn:
            prefix = index_prefix(self.tables.find(txn, key).id)
            cursor = txn.cursor(db=self.tables.files)
            found = cursor.set_range(prefix)
            raws = []
            hashed = False
            while found:
                raw_key = bytes(cursor.key())
                if not raw_key.startswith(prefix):
                    break
                hashed = hashed or is_hashed(raw_key)
                raws.append(bytes(cursor.value()))
                found = cursor.next()
        entries = Entry.many_from_bytes(raws)
        if hashed:  # keyed by hash, not in path order: rare, so sort only then
            entries.sort(key=Entry.key)
        return entries

    def entry(self, key: str, path: str) -> Entry | None:
        """The index entry of one path of ``key``'s layer, or None."""
        with self.db.begin() as txn:
            snapshot_id = self.tables.find(txn, key).id
            raw = txn.get(index_key(snapshot_id, os.fsencode(path)), db=self.tables.files)
        if raw is None:
            return None
        entry = Entry.from_bytes(bytes(raw))
        return entry if entry.path == path else None

    # -- overrides (a writable mount) ------------------------------------------------------

    def use_overrides(self, key: str) -> None:
        """Mark active ``key``'s index as overrides only (a writable mount starts): it
        must be scanned into a full index before commit. Refused if the index is a full
        layer index already."""
        with self.db.begin(write=True) as txn:
            record = self.tables.find_active(txn, key)
            marker = str(record.id).encode()
            if txn.get(marker, db=self._overrides) is None and self._has_rows(txn, record.id):
                raise FailedPrecondition(
                    f"snapshot {key} has a layer index already (an unpack in progress?)"
                )
            txn.put(marker, b"", db=self._overrides)

    def overrides(self, key: str) -> dict[str, Entry] | None:
        """``key``'s overrides by path when its index is overrides only, else None (a
        full layer index, or none at all)."""
        with self.db.begin() as txn:
            snapshot_id = self.tables.find(txn, key).id
            marked = self.is_overrides(txn, snapshot_id)
        return {entry.path: entry for entry in self.read(key)} if marked else None

    def put_override(self, key: str, entry: Entry) -> None:
        """Record one override entry of active ``key`` (metadata its directory cannot
        hold); from then on its index is overrides only."""
        with self.db.begin(write=True) as txn:
            record = self.tables.find_active(txn, key)
            txn.put(str(record.id).encode(), b"", db=self._overrides)
            txn.put(index_key(record.id, entry.key()), entry.to_bytes(), db=self.tables.files)

    def delete_override(self, key: str, path: str, subtree: bool = False) -> None:
        """Drop the override of ``path`` of active ``key`` (with ``subtree``, also of every
        path below it: a directory renamed or removed)."""
        with self.db.begin(write=True) as txn:
            snapshot_id = self.tables.find(txn, key).id
            txn.delete(index_key(snapshot_id, os.fsencode(path)), db=self.tables.files)
            if subtree:
                self._delete_below(txn, snapshot_id, os.fsencode(path) + b"/" if path else b"")

    # -- inside a caller's transaction (the snapshotter's commit and remove) ---------------

    def is_overrides(self, txn: lmdb.Transaction, snapshot_id: int) -> bool:
        """Whether ``snapshot_id``'s index holds overrides only."""
        return txn.get(str(snapshot_id).encode(), db=self._overrides) is not None

    def replace(
        self,
        txn: lmdb.Transaction,
        snapshot_id: int,
        entries: Iterable[Entry],
        stored: Iterable[bytes] | None = None,
    ) -> None:
        """The index of ``snapshot_id`` becomes ``entries``: a full layer index (again)
        (``stored``: their ``to_bytes()``, if the caller has them)."""
        self.tables.delete_index(txn, snapshot_id)
        self.forget(txn, snapshot_id)
        cursor = txn.cursor(db=self.tables.files)
        if stored is None:
            rows = ((index_key(snapshot_id, entry.key()), entry.to_bytes()) for entry in entries)
        else:
            pairs = zip(entries, stored, strict=True)
            rows = ((index_key(snapshot_id, entry.key()), raw) for entry, raw in pairs)
        cursor.putmulti(rows)

    def forget(self, txn: lmdb.Transaction, snapshot_id: int) -> None:
        """Drop ``snapshot_id``'s overrides mark (its rows go with its record: see
        ``Tables.delete``)."""
        txn.delete(str(snapshot_id).encode(), db=self._overrides)

    def _delete_below(self, txn: lmdb.Transaction, snapshot_id: int, below: bytes) -> None:
        """Delete every index entry whose path starts with ``below``."""
        prefix = index_prefix(snapshot_id)
        start = hashed_scan_start(prefix, below)
        cursor = txn.cursor(db=self.tables.files)
        found = cursor.set_range(start)
        while found:
            raw_key = bytes(cursor.key())
            if not raw_key.startswith(start):
                break
            if is_hashed(raw_key):
                path = Entry.from_bytes(bytes(cursor.value())).key()
            else:
                path = raw_key[len(prefix) :]
            found = cursor.delete() if path.startswith(below) else cursor.next()

    def _has_rows(self, txn: lmdb.Transaction, snapshot_id: int) -> bool:
        prefix = index_prefix(snapshot_id)
        cursor = txn.cursor(db=self.tables.files)
        return bool(cursor.set_range(prefix)) and bytes(cursor.key()).startswith(prefix)
