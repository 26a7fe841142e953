"""The snapshotter's LMDB records and the few operations on them inside one transaction.

Tables (all in the shared environment of ``fsnap.db.Database``):

- ``snapshots``: key or name (UTF-8) -> JSON record (``Record``): id, kind, parent, labels,
  created/updated (ns since the epoch) and, once committed, the cached usage.
- ``snapshots.ids``: id (decimal ASCII) -> key. Lets ``cleanup`` map a directory name back
  to its snapshot without scanning every record.
- ``snapshots.children``: parent + NUL + child -> b"". "Has children?" is one range lookup.
- ``snapshots.seq``: b"next" -> the next id to allocate (decimal ASCII). Ids never repeat,
  so a stale directory can never be mistaken for a new snapshot's.
- ``files``: id + NUL + path bytes -> ``Entry.to_bytes()``, the layer index. Keyed by id, not
  by name, so a commit (which renames the snapshot but keeps its id) keeps the index. LMDB
  refuses keys over 511 bytes (``MDB_BAD_VALSIZE``) while a legal path may be 4 KiB, so a
  path too long for that is keyed by its first bytes, a NUL (never in a path) and a 16-byte
  hash of the whole path (``index_key``); such keys are exactly ``MAX_KEY`` bytes, all
  shorter keys are plain paths. The value always holds the full path, so readers of a
  hashed key take the path from the entry. Plain keys keep the common case as it was (a
  prefix scan yields paths in byte order, an exact lookup is one get); hashed keys still
  share their path's first bytes, so a prefix scan over a directory finds them, and the
  rare index that has any is sorted after reading.

Every function here takes the caller's transaction: the snapshotter decides what makes one
atomic change.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import lmdb

from fsnap.db import Database, dumps
from fsnap.errors import FailedPrecondition, NotFound
from fsnap.snapshots.info import Info, Kind, Usage

SNAPSHOTS = "snapshots"
IDS = "snapshots.ids"
CHILDREN = "snapshots.children"
SEQ = "snapshots.seq"
FILES = "files"

_NEXT = b"next"
# LMDB's compiled-in maximum key size (``mdb_env_get_maxkeysize``, 511 in every build).
MAX_KEY = 511
_HASH_SIZE = 16


@dataclass
class Record:
    """One snapshot as stored: ``Info`` plus the on-disk id and, for committed, its usage."""

    id: int
    kind: Kind
    parent: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    created: int = 0
    updated: int = 0
    usage: Usage | None = None

    def to_bytes(self) -> bytes:
        usage = None if self.usage is None else [self.usage.size, self.usage.inodes]
        return dumps(
            {
                "id": self.id,
                "kind": self.kind.value,
                "parent": self.parent,
                "labels": self.labels,
                "created": self.created,
                "updated": self.updated,
                "usage": usage,
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> Record:
        row: dict[str, Any] = json.loads(raw)
        usage = row.get("usage")
        return cls(
            id=row["id"],
            kind=Kind(row["kind"]),
            parent=row["parent"],
            labels=row["labels"],
            created=row["created"],
            updated=row["updated"],
            usage=None if usage is None else Usage(usage[0], usage[1]),
        )

    def info(self, name: str) -> Info:
        return Info(
            name=name,
            kind=self.kind,
            parent=self.parent,
            labels=dict(self.labels),
            created=_from_ns(self.created),
            updated=_from_ns(self.updated),
        )


def _from_ns(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)


class Tables:
    """Record-level operations over the snapshotter's tables, inside a caller's txn."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.snapshots = db.table(SNAPSHOTS)
        self.ids = db.table(IDS)
        self.children = db.table(CHILDREN)
        self.seq = db.table(SEQ)
        self.files = db.table(FILES)

    def get(self, txn: lmdb.Transaction, key: str) -> Record | None:
        raw = txn.get(key.encode(), db=self.snapshots)
        return None if raw is None else Record.from_bytes(bytes(raw))

    def find(self, txn: lmdb.Transaction, key: str) -> Record:
        """``key``'s record; NotFound if there is none."""
        record = self.get(txn, key)
        if record is None:
            raise NotFound(f"snapshot {key} not found")
        return record

    def find_active(self, txn: lmdb.Transaction, key: str) -> Record:
        """``key``'s record; NotFound if none, FailedPrecondition unless it is active."""
        record = self.find(txn, key)
        require_active(key, record)
        return record

    def put(self, txn: lmdb.Transaction, key: str, record: Record) -> None:
        """Store ``record`` under ``key`` and keep the id and children tables in step."""
        txn.put(key.encode(), record.to_bytes(), db=self.snapshots)
        txn.put(str(record.id).encode(), key.encode(), db=self.ids)
        if record.parent:
            txn.put(_child_key(record.parent, key), b"", db=self.children)

    def delete(self, txn: lmdb.Transaction, key: str, record: Record) -> None:
        """Drop ``key``'s record, its id and parent links, and its layer index."""
        txn.delete(key.encode(), db=self.snapshots)
        txn.delete(str(record.id).encode(), db=self.ids)
        if record.parent:
            txn.delete(_child_key(record.parent, key), db=self.children)
        self.delete_index(txn, record.id)

    def rename(self, txn: lmdb.Transaction, old: str, new: str, record: Record) -> None:
        """Move ``old``'s record to ``new`` (a commit); the id, hence the index, stays."""
        txn.delete(old.encode(), db=self.snapshots)
        if record.parent:
            txn.delete(_child_key(record.parent, old), db=self.children)
        self.put(txn, new, record)

    def has_children(self, txn: lmdb.Transaction, key: str) -> bool:
        prefix = key.encode() + b"\0"
        cursor = txn.cursor(db=self.children)
        return bool(cursor.set_range(prefix)) and bytes(cursor.key()).startswith(prefix)

    def allocate_id(self, txn: lmdb.Transaction) -> int:
        raw = txn.get(_NEXT, db=self.seq)
        new_id = 1 if raw is None else int(raw)
        txn.put(_NEXT, str(new_id + 1).encode(), db=self.seq)
        return new_id

    def all_ids(self, txn: lmdb.Transaction) -> dict[int, str]:
        """Every allocated-and-live id with its key (for cleanup)."""
        return {int(k): bytes(v).decode() for k, v in txn.cursor(db=self.ids)}

    def records(self, txn: lmdb.Transaction) -> list[tuple[str, Record]]:
        cursor = txn.cursor(db=self.snapshots)
        return [(bytes(k).decode(), Record.from_bytes(bytes(v))) for k, v in cursor]

    def delete_index(self, txn: lmdb.Transaction, snapshot_id: int) -> None:
        prefix = index_prefix(snapshot_id)
        cursor = txn.cursor(db=self.files)
        found = cursor.set_range(prefix)
        while found and bytes(cursor.key()).startswith(prefix):
            found = cursor.delete()


def require_active(key: str, record: Record) -> None:
    if record.kind is not Kind.ACTIVE:
        raise FailedPrecondition(f"snapshot {key} is {record.kind.value}, not active")


def index_prefix(snapshot_id: int) -> bytes:
    """The ``files`` key prefix of one snapshot's index: its id and a NUL."""
    return str(snapshot_id).encode() + b"\0"


def index_key(snapshot_id: int, path: bytes) -> bytes:
    """The ``files`` key of ``path`` in snapshot ``snapshot_id`` (see the module docstring)."""
    prefix = index_prefix(snapshot_id)
    if len(prefix) + len(path) < MAX_KEY:
        return prefix + path
    return hashed_scan_start(prefix, path) + b"\0" + _path_hash(path)


def hashed_scan_start(prefix: bytes, path: bytes) -> bytes:
    """The part of a hashed key that is ``prefix`` plus the path's first bytes: every key
    of a path starting with ``path`` (hashed or not) starts with it."""
    return prefix + path[: MAX_KEY - len(prefix) - 1 - _HASH_SIZE]


def is_hashed(key: bytes) -> bool:
    """Whether ``key`` stands for its path by a hash (then the entry holds the path)."""
    return len(key) == MAX_KEY


def _path_hash(path: bytes) -> bytes:
    return hashlib.blake2b(path, digest_size=_HASH_SIZE).digest()


def _child_key(parent: str, child: str) -> bytes:
    return parent.encode() + b"\0" + child.encode()
