"""containerd's Snapshotter model over plain directories, with its metadata in LMDB.

A snapshot is a directory ``<root>/<id>/fs`` plus one LMDB record (see ``metadata``). Keys
of active/view snapshots and names of committed ones share one namespace. Every change is
one LMDB transaction, ordered with its directory operations so that a crash at any point
leaves only things ``cleanup`` recognises (see ``disk`` for the layout):

- create: stage ``new-<random>/`` -> txn (record + id) -> rename to ``<id>/``
- commit: txn (record moves from key to name; id, directory and index stay)
- remove: txn (record, links and index go) -> rename ``<id>/`` to ``rm-<id>/`` -> delete

Several processes may use one root at once: LMDB serialises the transactions, and every
check that matters is repeated inside the transaction that acts on it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path

import lmdb

from fsnap.archive.entry import Entry
from fsnap.db import Database
from fsnap.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from fsnap.private import private_dir
from fsnap.snapshots import disk
from fsnap.snapshots.cleanup import CleanupReport, clean
from fsnap.snapshots.filters import compile_filters
from fsnap.snapshots.info import Info, Kind, Mounts, Usage
from fsnap.snapshots.metadata import (
    Record,
    Tables,
    hashed_scan_start,
    index_key,
    index_prefix,
    is_hashed,
)

log = logging.getLogger(__name__)

MAX_LABELS_SIZE = 4096
# A parent link is keyed parent + NUL + child in LMDB (511 bytes at most): 255 each fits.
MAX_KEY_BYTES = 255
# Active snapshots served by a writable mount: key -> mount point (commit/remove refuse them).
MOUNTED = "snapshots.mounted"
# Ids of active snapshots whose index holds only *overrides* for the files in their
# directory (a writable mount's metadata that could not go on disk), not a full layer
# index: committing one scans its directory (``fsnap.diff.scan``) into a full index.
OVERRIDES = "snapshots.overrides"


class Snapshotter:
    """Prepare/View/Commit/Remove snapshots under ``root``; metadata in ``db``."""

    def __init__(self, root: Path, db: Database) -> None:
        self.root = private_dir(Path(root), Path(root).parent)
        self.db = db
        self.tables = Tables(db)
        # (named tables are opened before any transaction may use them)
        self._mounted = db.table(MOUNTED)
        self._overrides = db.table(OVERRIDES)
        self._closed = False
        self.last_cleanup: CleanupReport = self.cleanup()

    # -- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        """Refuse further calls. Idempotent; the shared ``Database`` is the Client's to close."""
        self._closed = True

    def cleanup(self) -> CleanupReport:
        """Remove what crashes left behind; report committed snapshots whose directory is gone.

        Runs on open. It is skipped (``report.skipped``) while another process is mid-change.
        """
        self._check_open()
        try:
            report = clean(self.root, self.tables)
        except (OSError, lmdb.Error) as exc:  # best effort: never fail an unrelated command
            log.warning("snapshot cleanup failed (will retry on next open): %s", exc)
            return CleanupReport(skipped=True)
        for name in report.missing:
            log.warning("committed snapshot %s has lost its directory", name)
        return report

    # -- creating ------------------------------------------------------------------------

    def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> Mounts:
        """A new writable (active) snapshot on top of committed ``parent`` (or empty)."""
        return self._create(Kind.ACTIVE, key, parent, labels)

    def view(self, key: str, parent: str, labels: Mapping[str, str] | None = None) -> Mounts:
        """A new read-only snapshot of committed ``parent``; it can never be committed."""
        return self._create(Kind.VIEW, key, parent, labels)

    def _create(
        self, kind: Kind, key: str, parent: str, labels: Mapping[str, str] | None
    ) -> Mounts:
        self._check_open()
        _check_key(key)
        clean_labels = _check_labels(labels)
        with disk.change_lock(self.root):
            staging = disk.stage_new(self.root, with_work=kind is Kind.ACTIVE)
            try:
                with self.db.begin(write=True) as txn:
                    if self.tables.get(txn, key) is not None:
                        raise AlreadyExists(f"snapshot {key} already exists")
                    chain = self._parents(txn, parent) if parent else []
                    now = time.time_ns()
                    record = Record(
                        id=self.tables.allocate_id(txn),
                        kind=kind,
                        parent=parent,
                        labels=clean_labels,
                        created=now,
                        updated=now,
                    )
                    self.tables.put(txn, key, record)
            except BaseException:
                disk.remove_tree(staging)
                raise
            try:
                disk.publish(staging, self._home(record.id))
            except OSError:
                self._forget(key, record.id)
                disk.remove_tree(staging)
                raise
        return self._mounts(record, chain)

    def _parents(self, txn: lmdb.Transaction, parent: str) -> list[Record]:
        """``parent`` and its ancestors, top first; ``parent`` must be committed."""
        first = self.tables.get(txn, parent)
        if first is None:
            raise NotFound(f"parent snapshot {parent} not found")
        if first.kind is not Kind.COMMITTED:
            raise InvalidArgument(f"parent {parent} is {first.kind.value}, not committed")
        chain = [first]
        while chain[-1].parent:
            above = self.tables.get(txn, chain[-1].parent)
            if above is None:
                raise NotFound(f"ancestor snapshot {chain[-1].parent} not found")
            chain.append(above)
        return chain

    def _forget(self, key: str, snapshot_id: int) -> None:
        """Undo a create whose directory could not be published."""
        with self.db.begin(write=True) as txn:
            record = self.tables.get(txn, key)
            if record is not None and record.id == snapshot_id:
                self.tables.delete(txn, key, record)

    # -- reading -------------------------------------------------------------------------

    def mounts(self, key: str) -> Mounts:
        """The overlay ``key`` stands for. A committed snapshot gives a read-only stack of
        itself and its parents (handy to mount an image's top layer directly)."""
        self._check_open()
        with self.db.begin() as txn:
            record = self._get(txn, key)
            chain = self._parents(txn, record.parent) if record.parent else []
        return self._mounts(record, chain)

    def _mounts(self, record: Record, parents: list[Record]) -> Mounts:
        lowers = [self._home(p.id) / disk.FS for p in parents]
        home = self._home(record.id)
        if record.kind is Kind.ACTIVE:
            upper, work = home / disk.FS, home / disk.WORK
            return Mounts(lowers=lowers, upper=upper, work=work, readonly=False)
        if record.kind is Kind.COMMITTED or not lowers:
            lowers.insert(0, home / disk.FS)
        return Mounts(lowers=lowers, upper=None, work=None, readonly=True)

    def stat(self, key: str) -> Info:
        self._check_open()
        with self.db.begin() as txn:
            return self._get(txn, key).info(key)

    def chain(self, key: str) -> list[Info]:
        """``key`` and its ancestors, bottom (base layer) first, ``key`` last."""
        self._check_open()
        infos = []
        with self.db.begin() as txn:
            name = key
            while name:
                record = self._get(txn, name)
                infos.append(record.info(name))
                name = record.parent
        infos.reverse()
        return infos

    def walk(self, filters: Sequence[str] = ()) -> Iterator[Info]:
        """Every snapshot matching any of ``filters`` (see ``filters``), in key order."""
        self._check_open()
        predicate = compile_filters(filters)
        with self.db.begin() as txn:
            infos = [record.info(key) for key, record in self.tables.records(txn)]
        return (info for info in infos if predicate(info))

    def dir(self, key: str) -> Path:
        """The snapshot's own contents directory (``<root>/<id>/fs``)."""
        self._check_open()
        with self.db.begin() as txn:
            return self._home(self._get(txn, key).id) / disk.FS

    def state_dir(self, key: str) -> Path:
        """The snapshot's own directory (``<root>/<id>``, mode 0700), where data derived
        from it may live (a mount's merged tree cache): removing the snapshot retires the
        directory, so nothing kept there outlives it."""
        self._check_open()
        with self.db.begin() as txn:
            return self._home(self._get(txn, key).id)

    def usage(self, key: str) -> Usage:
        """Bytes and inodes of ``key``'s own directory; cached for committed snapshots."""
        self._check_open()
        with self.db.begin() as txn:
            record = self._get(txn, key)
        if record.usage is not None:
            return record.usage
        try:
            return disk.disk_usage(self._home(record.id) / disk.FS)
        except FileNotFoundError:
            raise NotFound(f"directory of snapshot {key} is missing") from None

    # -- changing ------------------------------------------------------------------------

    def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> list[str]:
        """Turn active ``key`` into committed ``name`` (same parent, id and index); ``key``
        stops existing. ``labels`` replace the active snapshot's labels when given.

        Unix sockets a writable mount left in the directory are not content: they are left
        out of the index and removed from the directory; their paths are returned (for
        the caller to tell the user)."""
        self._check_open()
        _check_key(name)
        clean_labels = None if labels is None else _check_labels(labels)
        with disk.change_lock(self.root):
            with self.db.begin() as txn:
                before = self._get(txn, key)
                self._refuse_mounted(txn, key, "commit")
                scan = txn.get(str(before.id).encode(), db=self._overrides) is not None
            _require_active(key, before)
            usage = self.usage(key)
            index, sockets = self._scanned_index(key) if scan else (None, [])
            with self.db.begin(write=True) as txn:
                record = self._get(txn, key)
                if record.id != before.id:
                    raise FailedPrecondition(f"snapshot {key} changed during commit")
                _require_active(key, record)
                self._refuse_mounted(txn, key, "commit")
                if index is not None:
                    self._replace_index(txn, record.id, index)
                if self.tables.get(txn, name) is not None:
                    raise AlreadyExists(f"snapshot {name} already exists")
                now = time.time_ns()
                record.kind = Kind.COMMITTED
                record.usage = usage
                record.created = record.updated = now
                if clean_labels is not None:
                    record.labels = clean_labels
                self.tables.rename(txn, key, name, record)
        with contextlib.suppress(OSError):
            disk.remove_tree(self._home(record.id) / disk.WORK)
        fs_dir = self._home(record.id) / disk.FS
        for path in sockets:
            with contextlib.suppress(OSError):  # the index no longer shows it anyway
                os.unlink(fs_dir / path)
        return sockets

    def remove(self, key: str, *, if_updated: datetime | None = None) -> None:
        """Delete ``key`` and its directory; refused while a snapshot names it as parent.

        ``if_updated``: only if the snapshot was last updated then (what gc saw when it
        decided; a pull that reuses it ``touch``es it meanwhile), else FailedPrecondition."""
        self._check_open()
        with disk.change_lock(self.root):
            with self.db.begin(write=True) as txn:
                record = self._get(txn, key)
                if if_updated is not None and record.info(key).updated != if_updated:
                    raise FailedPrecondition(f"snapshot {key} changed meanwhile")
                if self.tables.has_children(txn, key):
                    raise FailedPrecondition(f"cannot remove snapshot {key}: it has children")
                self._refuse_mounted(txn, key, "remove")
                self.tables.delete(txn, key, record)
                txn.delete(str(record.id).encode(), db=self._overrides)
            disk.retire(self.root, record.id)

    def touch(self, key: str) -> bool:
        """Mark ``key`` as just used (its ``updated`` time becomes now); False if there is
        no such snapshot. A pull touches each committed snapshot it reuses, inside its
        lease: gc then keeps it (``fsnap.leases``), or, if gc removed it first, the pull
        sees False and unpacks the layer again."""
        self._check_open()
        with self.db.begin(write=True) as txn:
            record = self.tables.get(txn, key)
            if record is None:
                return False
            record.updated = time.time_ns()
            self.tables.put(txn, key, record)
        return True

    def update(self, key: str, labels: Mapping[str, str], fieldpaths: Sequence[str] = ()) -> Info:
        """Change labels, nothing else. With no ``fieldpaths`` (or ``"labels"``) the labels
        are replaced; ``labels.<k>`` sets (or, absent from ``labels``, deletes) one key."""
        self._check_open()
        given = _check_labels(labels)
        with self.db.begin(write=True) as txn:
            record = self._get(txn, key)
            record.labels = _updated_labels(record.labels, given, fieldpaths)
            _check_labels(record.labels)
            record.updated = time.time_ns()
            self.tables.put(txn, key, record)
            return record.info(key)

    # -- layer index -----------------------------------------------------------------------

    def write_index(self, key: str, entries: Iterable[Entry]) -> None:
        """Replace active ``key``'s layer index with ``entries`` (a later duplicate path
        wins), in one transaction. Committed snapshots are immutable, so is their index."""
        self._check_open()
        with self.db.begin(write=True) as txn:
            record = self._get(txn, key)
            _require_active(key, record)
            self._replace_index(txn, record.id, entries)

    def read_index(self, key: str) -> list[Entry]:
        """``key``'s layer index ordered by path bytes (the root ``""`` first)."""
        self._check_open()
        with self.db.begin() as txn:
            prefix = index_prefix(self._get(txn, key).id)
            cursor = txn.cursor(db=self.tables.files)
            found = cursor.set_range(prefix)
            entries = []
            hashed = False
            while found:
                raw_key = bytes(cursor.key())
                if not raw_key.startswith(prefix):
                    break
                hashed = hashed or is_hashed(raw_key)
                entries.append(Entry.from_bytes(bytes(cursor.value())))
                found = cursor.next()
        if hashed:  # keyed by hash, not in path order: rare, so sort only then
            entries.sort(key=Entry.key)
        return entries

    def index_entry(self, key: str, path: str) -> Entry | None:
        """The index entry of one path of ``key``'s layer, or None."""
        self._check_open()
        with self.db.begin() as txn:
            snapshot_id = self._get(txn, key).id
            raw = txn.get(index_key(snapshot_id, os.fsencode(path)), db=self.tables.files)
        if raw is None:
            return None
        entry = Entry.from_bytes(bytes(raw))
        return entry if entry.path == path else None

    # -- writable mounts ------------------------------------------------------------------

    def put_index_entry(self, key: str, entry: Entry) -> None:
        """Record one override entry of active ``key`` (metadata its directory cannot hold);
        from then on its index is overrides only, and commit scans the directory."""
        self._check_open()
        with self.db.begin(write=True) as txn:
            record = self._get(txn, key)
            _require_active(key, record)
            txn.put(str(record.id).encode(), b"", db=self._overrides)
            txn.put(index_key(record.id, entry.key()), entry.to_bytes(), db=self.tables.files)

    def delete_index_entry(self, key: str, path: str, subtree: bool = False) -> None:
        """Drop the override of ``path`` of active ``key`` (with ``subtree``, also of every
        path below it: a directory renamed or removed)."""
        self._check_open()
        with self.db.begin(write=True) as txn:
            snapshot_id = self._get(txn, key).id
            txn.delete(index_key(snapshot_id, os.fsencode(path)), db=self.tables.files)
            if subtree:
                self._delete_below(txn, snapshot_id, os.fsencode(path) + b"/" if path else b"")

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

    def use_overrides(self, key: str) -> None:
        """Mark active ``key``'s index as overrides only (a writable mount starts): commit
        will scan its directory. Refused if the index is a full layer index already."""
        self._check_open()
        with self.db.begin(write=True) as txn:
            record = self._get(txn, key)
            _require_active(key, record)
            flags = self._overrides
            marker = str(record.id).encode()
            if txn.get(marker, db=flags) is None and self._has_index(txn, record.id):
                raise FailedPrecondition(
                    f"snapshot {key} has a layer index already (an unpack in progress?)"
                )
            txn.put(marker, b"", db=flags)

    def set_mounted(self, key: str, mountpoint: str | None) -> None:
        """Record that active ``key`` is mounted writable at ``mountpoint`` (None: no longer).
        One writable mount per snapshot: a second is refused, naming the first."""
        self._check_open()
        table = self._mounted
        with self.db.begin(write=True) as txn:
            if mountpoint is None:
                txn.delete(key.encode(), db=table)
                return
            _require_active(key, self._get(txn, key))
            current = txn.get(key.encode(), db=table)
            if current is not None and bytes(current).decode() != mountpoint:
                raise FailedPrecondition(
                    f"snapshot {key} is already mounted writable at {bytes(current).decode()}"
                )
            txn.put(key.encode(), mountpoint.encode(), db=table)

    def mounted_at(self, key: str) -> str | None:
        """Where active ``key`` is mounted writable, or None."""
        self._check_open()
        with self.db.begin() as txn:
            raw = txn.get(key.encode(), db=self._mounted)
        return None if raw is None else bytes(raw).decode()

    def _refuse_mounted(self, txn: lmdb.Transaction, key: str, action: str) -> None:
        raw = txn.get(key.encode(), db=self._mounted)
        if raw is not None:
            mnt = bytes(raw).decode()
            raise FailedPrecondition(
                f"cannot {action} snapshot {key}: it is mounted writable at {mnt}; "
                f"run `fsnap umount {mnt}` first"
            )

    def _scanned_index(self, key: str) -> tuple[list[Entry], list[str]]:
        """The full index of active ``key`` (its directory scanned, with its overrides),
        without sockets; and the sockets' paths."""
        from fsnap.diff.scan import scan_snapshot, without_sockets

        overrides = {entry.path: entry for entry in self.read_index(key)}
        return without_sockets(scan_snapshot(self.dir(key), overrides))

    def _replace_index(
        self, txn: lmdb.Transaction, snapshot_id: int, entries: Iterable[Entry]
    ) -> None:
        """The index of ``snapshot_id`` becomes ``entries`` (a full layer index again, not
        overrides)."""
        self.tables.delete_index(txn, snapshot_id)
        txn.delete(str(snapshot_id).encode(), db=self._overrides)
        cursor = txn.cursor(db=self.tables.files)
        rows = ((index_key(snapshot_id, entry.key()), entry.to_bytes()) for entry in entries)
        cursor.putmulti(rows)

    def _has_index(self, txn: lmdb.Transaction, snapshot_id: int) -> bool:
        prefix = index_prefix(snapshot_id)
        cursor = txn.cursor(db=self.tables.files)
        return bool(cursor.set_range(prefix)) and bytes(cursor.key()).startswith(prefix)

    # -- helpers ---------------------------------------------------------------------------

    def _home(self, snapshot_id: int) -> Path:
        return self.root / str(snapshot_id)

    def _get(self, txn: lmdb.Transaction, key: str) -> Record:
        record = self.tables.get(txn, key)
        if record is None:
            raise NotFound(f"snapshot {key} not found")
        return record

    def _check_open(self) -> None:
        if self._closed:
            raise FailedPrecondition("snapshotter is closed")


def _require_active(key: str, record: Record) -> None:
    if record.kind is not Kind.ACTIVE:
        raise FailedPrecondition(f"snapshot {key} is {record.kind.value}, not active")


def _check_key(key: str) -> None:
    if not key:
        raise InvalidArgument("snapshot key must not be empty")
    if "\0" in key:
        raise InvalidArgument("snapshot key must not contain NUL")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise InvalidArgument(f"snapshot key longer than {MAX_KEY_BYTES} bytes")


def _check_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    """A copy of ``labels``, refused if malformed or over containerd's 4 KiB budget."""
    result = dict(labels or {})
    size = 0
    for k, v in result.items():
        if not isinstance(k, str) or not isinstance(v, str) or not k:
            raise InvalidArgument(f"bad label {k!r}={v!r}: keys and values are strings")
        size += len(k) + len(v)
    if size > MAX_LABELS_SIZE:
        raise InvalidArgument(f"labels too large: {size} bytes > {MAX_LABELS_SIZE}")
    return result


def _updated_labels(
    current: dict[str, str], given: dict[str, str], fieldpaths: Sequence[str]
) -> dict[str, str]:
    if not fieldpaths:
        return given
    result = dict(current)
    for path in fieldpaths:
        if path == "labels":
            result = dict(given)
        elif path.startswith("labels."):
            label = path.removeprefix("labels.")
            if label in given:
                result[label] = given[label]
            else:
                result.pop(label, None)
        else:
            raise InvalidArgument(f"cannot update {path!r} of a snapshot: only labels change")
    return result
