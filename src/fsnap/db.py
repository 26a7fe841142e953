"""The LMDB environment every fsnap store shares.

One environment under ``<root>/meta`` holds named databases, one per concept (content,
ingests, images, snapshots, …). Several processes (the CLI, mount daemons, concurrent
pulls) open it at once; LMDB serialises writers. Open it *after* any fork (an environment
must not cross fork(): LMDB's documentation, "Caveats"), keep write transactions short, and
never hold a transaction across an await.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb

from fsnap.errors import FailedPrecondition

# Sparse: LMDB only uses what it writes. 64 GiB leaves room for 100k-file indexes.
MAP_SIZE = 1 << 36
MAX_DBS = 32


class Database:
    """A handle on the shared LMDB environment with named sub-databases."""

    def __init__(self, root: Path) -> None:
        self.path = root / "meta"
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self.env = lmdb.open(
                str(self.path),
                map_size=MAP_SIZE,
                max_dbs=MAX_DBS,
                subdir=True,
                lock=True,
                max_readers=512,
            )
        except lmdb.Error as exc:
            # e.g. another user's root (lock.mdb needs write access even to read): a typed
            # error, so the CLI prints one line instead of lmdb's traceback.
            raise FailedPrecondition(f"cannot open fsnap metadata: {exc}") from None
        self._dbs: dict[str, Any] = {}
        self.pid = os.getpid()

    def table(self, name: str) -> Any:
        """The named sub-database (created on first use)."""
        handle = self._dbs.get(name)
        if handle is None:
            # Inside a transaction of our own: without one, py-lmdb's open_db waits for the
            # write lock *holding the GIL*, and a write transaction in another of our
            # threads can then never finish (a whole-process deadlock).
            with self.env.begin(write=True) as txn:
                handle = self.env.open_db(name.encode(), txn=txn, create=True)
            self._dbs[name] = handle
        return handle

    def begin(self, write: bool = False) -> lmdb.Transaction:
        return self.env.begin(write=write)

    def get_json(self, table: str, key: str) -> Any:
        with self.env.begin(db=self.table(table)) as txn:
            raw = txn.get(key.encode())
        return None if raw is None else json.loads(raw)

    def put_json(self, table: str, key: str, value: Any) -> None:
        with self.env.begin(write=True, db=self.table(table)) as txn:
            txn.put(key.encode(), dumps(value))

    def delete(self, table: str, key: str) -> bool:
        with self.env.begin(write=True, db=self.table(table)) as txn:
            return bool(txn.delete(key.encode()))

    def items_json(self, table: str, prefix: str = "") -> Iterator[tuple[str, Any]]:
        """All (key, value) pairs of a table whose key starts with ``prefix``, in key order."""
        raw_prefix = prefix.encode()
        with self.env.begin(db=self.table(table)) as txn:
            cursor = txn.cursor()
            found = cursor.set_range(raw_prefix) if raw_prefix else cursor.first()
            rows = []
            while found:
                key, value = cursor.item()
                if not bytes(key).startswith(raw_prefix):
                    break
                rows.append((bytes(key).decode(), json.loads(value)))
                found = cursor.next()
        yield from rows

    def close(self) -> None:
        self.env.close()


def delete_prefix(txn: lmdb.Transaction, table: Any, prefix: str) -> int:
    """Delete the rows of ``table`` (a ``Database.table`` handle, opened before ``txn``)
    whose key starts with ``prefix``, inside the write transaction ``txn``; how many."""
    raw = prefix.encode()
    cursor = txn.cursor(db=table)
    found = cursor.set_range(raw)
    deleted = 0
    while found and bytes(cursor.key()).startswith(raw):
        found = cursor.delete()
        deleted += 1
    return deleted


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
