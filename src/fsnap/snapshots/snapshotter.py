"""``LocalSnapshotter``: the ``Snapshotter`` contract (``api``) over plain directories,
with its metadata in LMDB.

A snapshot is a directory ``<root>/<id>/fs`` plus one LMDB record (see ``metadata``). Keys
of active/view snapshots and names of committed ones share one namespace. Every change is
one LMDB transaction, ordered with its directory operations so that a crash at any point
leaves only things ``cleanup`` recognises (see ``disk`` for the layout):

- create: stage ``new-<random>/`` -> txn (record + id) -> rename to ``<id>/``
- commit: txn (record moves from key to name; id, directory and index stay)
- remove: txn (record, links and index go) -> rename ``<id>/`` to ``rm-<id>/`` -> delete

Several processes may use one root at once: LMDB serialises the transactions, and every
check that matters is repeated inside the transaction that acts on it.

Beyond the contract it offers what fsnap's own packages need of a local store: each
snapshot's directory (``dir``, ``state_dir``), its ancestry in one read (``chain``),
``touch`` for leases, crash ``cleanup``, and the per-layer index (``index``, a
``LayerIndex`` over the same environment). What may keep a snapshot from being committed
or removed (a writable mount) is a ``Hold`` it is given, not something it tracks.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import lmdb

from fsnap.archive.entry import Entry
from fsnap.db import Database, delete_prefix
from fsnap.errors import AlreadyExists, Busy, FailedPrecondition, InvalidArgument, NotFound
from fsnap.private import private_dir
from fsnap.snapshots import disk
from fsnap.snapshots.api import Hold, Snapshotter
from fsnap.snapshots.cleanup import CleanupReport, clean
from fsnap.snapshots.filters import compile_filters
from fsnap.snapshots.index import LayerIndex
from fsnap.snapshots.info import Info, Kind, Mounts, Usage
from fsnap.snapshots.metadata import Record, Tables, require_active

log = logging.getLogger(__name__)

# containerd's limit is per label (``labels.Validate``: key + value, 4 KiB); its CRI plugin
# sends a 4 KiB ``cri.image-layers`` label beside four others. The total is fsnap's own
# bound on what one snapshot's record may hold.
MAX_LABEL_SIZE = 4096
MAX_LABELS_SIZE = 64 * 1024
# A parent link is keyed parent + NUL + child in LMDB (511 bytes at most): 255 each fits.
MAX_KEY_BYTES = 255
# The tables of rows "<snapshot name> <path>..." that describe a snapshot's directory
# (which files, and which chunks of files, of a lazy layer are fetched: ``fsnap.lazy.state``).
# They go with the snapshot, in ``remove``'s own transaction: a later snapshot of the same
# name (a lazy layer pulled again) must not inherit them, or its empty files would pass for
# fetched ones.
OWNED_TABLES = ("lazy", "lazy-chunks")


class LocalSnapshotter:
    """Prepare/View/Commit/Remove snapshots under ``root``; metadata in ``db``. A
    ``Snapshotter[Mounts]``; ``holds`` may refuse a commit or remove (see ``Hold``)."""

    def __init__(self, root: Path, db: Database, holds: Sequence[Hold] = ()) -> None:
        self.root = private_dir(Path(root), Path(root).parent)
        self.db = db
        self.tables = Tables(db)
        self._index = LayerIndex(self.tables)
        self._holds = tuple(holds)
        self._closed = False
        self.last_cleanup: CleanupReport = self.cleanup()

    @property
    def index(self) -> LayerIndex:
        """The per-layer indexes of these snapshots."""
        self._check_open()
        return self._index

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
        return _measure(key, self._home(record.id) / disk.FS)

    # -- changing ------------------------------------------------------------------------

    def commit(
        self,
        name: str,
        key: str,
        labels: Mapping[str, str] | None = None,
        *,
        index: Iterable[Entry] | None = None,
        usage: Usage | None = None,
    ) -> None:
        """Turn active ``key`` into committed ``name`` (same parent, id and index); ``key``
        stops existing. ``labels`` replace the active snapshot's labels when given.
        ``usage``: the directory's usage as its writer just measured it (an applier
        process, ``fsnap.unpack``); else the directory is walked here.

        ``index`` replaces the layer index in the commit's own transaction. It is required
        when the index holds a writable mount's overrides only: the caller scans the
        directory into a full index (``fsnap.diff.active``), as this package reads no
        files. Refused (FailedPrecondition) while a hold (a writable mount) has ``key``."""
        self._check_open()
        _check_key(name)
        clean_labels = None if labels is None else _check_labels(labels)
        with disk.change_lock(self.root):
            with self.db.begin() as txn:
                before = self.tables.find(txn, key)
                self._refuse_held(txn, key, "commit")
            require_active(key, before)
            usage = usage or self.usage(key)
            with self.db.begin(write=True) as txn:
                record = self.tables.find(txn, key)
                if record.id != before.id:
                    raise FailedPrecondition(f"snapshot {key} changed during commit")
                require_active(key, record)
                self._refuse_held(txn, key, "commit")
                if index is not None:
                    self._index.replace(txn, record.id, index)
                elif self._index.is_overrides(txn, record.id):
                    raise FailedPrecondition(
                        f"snapshot {key} was written through a writable mount: "
                        "its directory must be scanned into its index to commit it"
                    )
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

    def check_holds(self, key: str, action: str) -> None:
        """Raise what a hold would raise if ``key`` were committed or removed now (a
        caller's early check before slow work; ``commit``/``remove`` check again)."""
        self._check_open()
        with self.db.begin() as txn:
            self._refuse_held(txn, key, action)

    def remove(self, key: str, *, if_updated: datetime | None = None) -> None:
        """Delete ``key`` and its directory; refused while a snapshot names it as parent.

        ``if_updated``: only if the snapshot was last updated then (what gc saw when it
        decided; a pull that reuses it ``touch``es it meanwhile), else FailedPrecondition."""
        self._check_open()
        owned = [self.db.table(t) for t in OWNED_TABLES]  # before the write transaction
        with disk.change_lock(self.root):
            with self.db.begin(write=True) as txn:
                record = self._get(txn, key)
                if if_updated is not None and record.info(key).updated != if_updated:
                    raise FailedPrecondition(f"snapshot {key} changed meanwhile")
                if self.tables.has_children(txn, key):
                    raise FailedPrecondition(f"cannot remove snapshot {key}: it has children")
                self._refuse_held(txn, key, "remove")
                self.tables.delete(txn, key, record)
                self._index.forget(txn, record.id)
                for table in owned:
                    delete_prefix(txn, table, key + " ")
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

    # -- helpers ---------------------------------------------------------------------------

    def _home(self, snapshot_id: int) -> Path:
        return self.root / str(snapshot_id)

    def _get(self, txn: lmdb.Transaction, key: str) -> Record:
        return self.tables.find(txn, key)

    def _refuse_held(self, txn: lmdb.Transaction, key: str, action: str) -> None:
        for hold in self._holds:
            hold.check(txn, key, action)

    def _check_open(self) -> None:
        if self._closed:
            raise FailedPrecondition("snapshotter is closed")


def _check_key(key: str) -> None:
    if not key:
        raise InvalidArgument("snapshot key must not be empty")
    if "\0" in key:
        raise InvalidArgument("snapshot key must not contain NUL")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise InvalidArgument(f"snapshot key longer than {MAX_KEY_BYTES} bytes")


def _check_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    """A copy of ``labels``, refused if malformed, if one label is over containerd's 4 KiB
    or all together over MAX_LABELS_SIZE."""
    result = dict(labels or {})
    size = 0
    for k, v in result.items():
        if not isinstance(k, str) or not isinstance(v, str) or not k:
            raise InvalidArgument(f"bad label {k!r}={v!r}: keys and values are strings")
        if len(k) + len(v) > MAX_LABEL_SIZE:
            raise InvalidArgument(
                f"label {k[:64]!r} too large: {len(k) + len(v)} bytes > {MAX_LABEL_SIZE}"
            )
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


USAGE_TRIES = 5  # walks of an active snapshot a concurrent writer may spoil


def _measure(key: str, fs: Path) -> Usage:
    """``disk_usage`` of an active snapshot's directory, which a container may be changing:
    a walk that lost its way (a directory it was in removed meanwhile) is retried; only the
    directory itself missing is NotFound."""
    for _ in range(USAGE_TRIES):
        try:
            return disk.disk_usage(fs)
        except FileNotFoundError:
            if not fs.is_dir():
                raise NotFound(f"directory of snapshot {key} is missing") from None
        except OSError as exc:
            if exc.errno != errno.ESTALE:
                raise
    raise Busy(f"snapshot {key} kept changing while its usage was measured; try again")


if TYPE_CHECKING:  # (mypy holds the class to the contract, verb by verb)
    _CONTRACT: type[Snapshotter[Mounts]] = LocalSnapshotter
