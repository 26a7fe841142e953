"""What makes a committed snapshot lazy, and which of its files are present.

A lazy layer is a committed snapshot (named by its chain ID, as any layer) whose directory
holds the tree of its TOC without the files still to fetch (``fsnap.lazy.skeleton``); its
index has them all. It carries:

- the label ``LAZY_LABEL`` = the layer blob's digest (its presence is what "lazy" means;
  completing the layer removes it), and ``LAZY_REF_LABEL`` = the repository to fetch from;
- in its state directory (``Snapshotter.state_dir``, kept exactly as long as the snapshot)
  ``lazy.json``: the blob's descriptor, the verified TOC JSON as fetched (``toc``), and
  what serving needs of it in compact form (``files``, ``prefetch_end``: ``FileTable``).
  Both are written *before* the snapshot is committed, so a committed lazy snapshot always
  has them;
- rows in the LMDB table ``lazy``: ``<chain ID> <path>`` for each file whose contents are
  in the directory and verified, and in ``lazy-chunks``: ``<chain ID> <path>\0<offset>``
  (hex) for each chunk of a file read in part (a file's chunk rows make way for its file
  row once it is whole). A row is written only after its data is on disk (fsync), so
  a crash can lose a fetch, never claim one (a file created by its first fetch is
  flushed with its directory entry).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import os
import posixpath
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fsnap.archive import metadata
from fsnap.archive.entry import Entry
from fsnap.db import Database, delete_prefix, dumps
from fsnap.errors import FailedPrecondition, InvalidArgument
from fsnap.labels import LAZY_LABEL
from fsnap.lazy.toc import Chunk, Seekable, Toc, TocEntry, parse_toc, seekable
from fsnap.oci import Descriptor
from fsnap.snapshots.info import Info
from fsnap.snapshots.snapshotter import OWNED_TABLES, LocalSnapshotter

STATE_FILE = "lazy.json"
# The snapshotter drops a snapshot's rows of both when it removes it.
TABLE, CHUNK_TABLE = OWNED_TABLES
_CREATE_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_WALK = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


@dataclass
class LazyRecord:
    """A lazy layer's fixed facts: its blob, where it comes from, its TOC.

    ``toc_json`` is the verified TOC (kept as ``lazy.json`` stores it, base64, and decoded
    on first use); ``toc`` parses it on first use only. What serving
    needs, ``files`` (each file's entry and chunks by path) and ``prefetch_end``, come
    from the compact table ``write_record`` stores next to it (``FileTable``): parsing
    the bench image's four TOCs (9,794 entries) again cost each mount's daemon start
    ~0.3-0.6 s. A record written before the table existed (``table`` None) parses."""

    descriptor: Descriptor
    reference: str
    diff_id: str  # what the image config says the blob's tar hashes to
    toc_base64: str
    payload_end: int
    table: dict[str, list[Any]] | None = None
    stored_prefetch_end: int | None = None
    _toc: Toc | None = field(default=None, repr=False)
    _files: FileTable | None = field(default=None, repr=False)

    @classmethod
    def of_toc(cls, descriptor: Descriptor, reference: str, toc: Toc, diff_id: str) -> LazyRecord:
        """The record of a TOC just fetched and verified (the pull's)."""
        encoded = base64.b64encode(toc.raw).decode()
        record = cls(descriptor, reference, diff_id, encoded, toc.payload_end)
        record._toc = toc
        record.table = {path: _row(e) for path, e in toc.file_paths().items()}
        record.stored_prefetch_end = toc.prefetch_end
        return record

    @property
    def layer(self) -> Seekable:
        found = seekable(
            self.descriptor.media_type, self.descriptor.size, self.descriptor.annotations
        )
        assert found is not None
        return found

    @property
    def toc_json(self) -> bytes:
        """The TOC's JSON as fetched and verified at pull."""
        try:
            return base64.b64decode(self.toc_base64, validate=True)
        except ValueError as e:
            raise FailedPrecondition(f"lazy layer state: the stored TOC: {e}") from None

    @property
    def toc(self) -> Toc:
        """The TOC, parsed (and checked) again on first use."""
        if self._toc is None:
            self._toc = parse_toc(self.toc_json, self.layer, payload_end=self.payload_end)
        return self._toc

    @property
    def files(self) -> FileTable:
        """The files with contents by index path (``Toc.file_paths``)."""
        if self._files is None:
            if self.table is None:
                self.table = {path: _row(e) for path, e in self.toc.file_paths().items()}
            self._files = FileTable(self.table)
        return self._files

    @property
    def prefetch_end(self) -> int | None:
        """``Toc.prefetch_end``."""
        return self.stored_prefetch_end if self.table is not None else self.toc.prefetch_end


class FileTable(Mapping[str, TocEntry]):
    """A lazy layer's files with contents by index path, each ``TocEntry`` made from its
    stored row on first access (a mount reads few of its files)."""

    def __init__(self, rows: dict[str, list[Any]]) -> None:
        self.rows = rows  # what ``lazy.json`` stores
        self._made: dict[str, TocEntry] = {}
        self._order: list[tuple[int, int, str]] | None = None  # (start, end, path)
        self._position: dict[str, int] = {}

    def __getitem__(self, path: str) -> TocEntry:
        made = self._made.get(path)
        if made is None:
            row = self.rows[path]
            try:
                made = self._made[path] = _entry(row)
            except (ValueError, TypeError, IndexError, AttributeError) as e:
                raise FailedPrecondition(f"lazy layer state: bad file row of {path}: {e}") from None
        return made

    def __contains__(self, path: object) -> bool:
        return path in self.rows

    def __iter__(self) -> Iterator[str]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def size(self, path: str) -> int:
        """``self[path].size``, without making the entry."""
        return int(self.rows[path][0])

    def directory_run(self, path: str, limit: int) -> tuple[int, int] | None:
        """The compressed span ``[start, end)`` of the files next to ``path`` in the blob
        that share its directory (``path`` included), when it is at most ``limit`` bytes;
        else None. Blocking (the first call orders the files by their place in the blob)."""
        if self._order is None:
            self._order, self._position = _blob_order(self.rows)
        at = self._position.get(path)
        if at is None:
            return None
        order, directory = self._order, posixpath.dirname(path)
        first = last = at
        start, end = order[at][0], order[at][1]
        while first > 0 and posixpath.dirname(order[first - 1][2]) == directory:
            first -= 1
            start = order[first][0]
            if end - start > limit:
                return None
        while last + 1 < len(order) and posixpath.dirname(order[last + 1][2]) == directory:
            last += 1
            end = max(end, order[last][1])
            if end - start > limit:
                return None
        return (start, end) if end - start <= limit else None


def _blob_order(rows: dict[str, list[Any]]) -> tuple[list[tuple[int, int, str]], dict[str, int]]:
    """The files with bytes in the blob as ``(start, end, path)`` in blob order, and each
    one's place in that list (a row's chunk: ``[offset, size, start, end, inner, digest,
    zeros]``)."""
    order = []
    for path, row in rows.items():
        spans = [(int(c[2]), int(c[3])) for c in row[2] if not c[6]]
        if spans:
            order.append((min(s for s, _ in spans), max(e for _, e in spans), path))
    order.sort()
    return order, {path: at for at, (_, _, path) in enumerate(order)}


def _row(entry: TocEntry) -> list[Any]:
    """A ``FileTable`` row: size, the entry as the index stores one, its chunks."""
    chunks = [[c.offset, c.size, c.start, c.end, c.inner, c.digest, c.zeros] for c in entry.chunks]
    return [entry.size, entry.meta.to_bytes().decode(), chunks]


def _entry(row: list[Any]) -> TocEntry:
    return TocEntry(Entry.from_bytes(row[1].encode()), tuple(Chunk(*c) for c in row[2]))


def write_record(state_dir: Path, record: LazyRecord) -> None:
    """``lazy.json`` in ``state_dir``, written atomically and flushed. Encoded in one
    ``json.dumps`` and one write: ``json.dump`` writes piece by piece (67-104 ms against
    29-41 ms for the bench image's biggest layer, 3.4 MB, on the lazy mount's path)."""
    doc: dict[str, Any] = {
        "descriptor": record.descriptor.to_json(),
        "reference": record.reference,
        "diff_id": record.diff_id,
        "payload_end": record.payload_end,
        "toc": record.toc_base64,
        "prefetch_end": record.prefetch_end,
        "files": record.files.rows,
    }
    temp = state_dir / (STATE_FILE + ".tmp")
    with open(temp, "w") as out:
        out.write(json.dumps(doc, separators=(",", ":")))
        out.flush()
        os.fsync(out.fileno())
    os.replace(temp, state_dir / STATE_FILE)


def read_record(state_dir: Path) -> LazyRecord:
    """The record ``write_record`` left, trusted as written at pull (its TOC was verified
    then; it is parsed again only if ``toc`` is asked for, or no file table is stored)."""
    try:
        doc = json.loads((state_dir / STATE_FILE).read_text())
        desc = Descriptor.from_json(doc["descriptor"])
        toc = doc["toc"]
        if not isinstance(toc, str):
            raise TypeError("bad TOC")
        payload_end = int(doc["payload_end"])
        diff_id = str(doc["diff_id"])
        table = doc.get("files")
        prefetch_end = doc.get("prefetch_end")
        if table is not None and not isinstance(table, dict):
            raise TypeError("bad file table")
        if prefetch_end is not None:
            prefetch_end = int(prefetch_end)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FailedPrecondition(f"lazy layer state in {state_dir} is unreadable: {e}") from None
    if seekable(desc.media_type, desc.size, desc.annotations) is None:
        raise FailedPrecondition(f"lazy layer state in {state_dir}: blob is not seekable")
    record = LazyRecord(desc, str(doc["reference"]), diff_id, toc, payload_end, table)
    record.stored_prefetch_end = prefetch_end
    return record


def present(db: Database, chain_id: str) -> set[str]:
    """The paths of ``chain_id`` whose contents are fetched."""
    prefix = chain_id + " "
    return {key[len(prefix) :] for key, _ in db.items_json(TABLE, prefix)}


def lazy_layers(snapshots: LocalSnapshotter, db: Database, top: str) -> list[tuple[str, int, int]]:
    """(name, bytes present, bytes in all) of each lazy snapshot in ``top``'s chain."""
    out = []
    for info in snapshots.chain(top):
        if LAZY_LABEL not in info.labels:
            continue
        files = read_record(snapshots.state_dir(info.name)).files
        total = sum(files.size(path) for path in files)
        prefix = info.name + " "
        have = sum(int(size) for _, size in db.items_json(TABLE, prefix))
        have += sum(int(size) for _, size in db.items_json(CHUNK_TABLE, prefix))
        out.append((info.name, have, total))
    return out


def require_complete(chain: list[Info], doing: str, remedy: str) -> None:
    """Refuse (``FailedPrecondition``) to ``doing`` when ``chain`` holds a lazy
    layer: its directory has empty files where contents are not fetched yet, and its blob
    is not in the content store. Only a lazy mount fetches on read; whatever reads snapshot
    directories or blobs directly (an export, a push, containerd's overlay mounts) would
    silently write empty files or miss blobs. ``remedy`` says what completes the layers."""
    lazy = [info.name for info in chain if LAZY_LABEL in info.labels]
    if lazy:
        raise FailedPrecondition(
            f"cannot {doing}: {len(lazy)} of its layers were pulled lazily and are not "
            f"complete ({', '.join(name[:19] for name in lazy)}); {remedy}"
        )


def is_present(db: Database, chain_id: str, path: str) -> bool:
    return db.get_json(TABLE, f"{chain_id} {path}") is not None


def present_chunks(db: Database, chain_id: str, path: str) -> set[int]:
    """The offsets of ``path``'s chunks fetched (the file not whole yet)."""
    prefix = f"{chain_id} {path}\0"
    return {int(key[len(prefix) :], 16) for key, _ in db.items_json(CHUNK_TABLE, prefix)}


def mark_chunks(
    db: Database, chain_id: str, path: str, chunks: list[Chunk], whole: int | None
) -> None:
    """Record ``chunks`` of ``path`` as fetched; with ``whole`` (the file's size) the file
    is complete: its row replaces its chunk rows. One transaction."""
    mark_fetched(db, [Fetched(chain_id, path, tuple(chunks), whole)])


@dataclass(frozen=True)
class Fetched:
    """Chunks of a lazy file written into its layer directory, to record once flushed
    (``whole``: the file's size, when these chunks completed it)."""

    chain_id: str
    path: str
    chunks: tuple[Chunk, ...]
    whole: int | None
    created: bool = False  # the write created the file: its directory entry is new


def mark_fetched(db: Database, fetched: list[Fetched]) -> None:
    """``mark_chunks`` of each, in order, in one transaction (one LMDB commit)."""
    files, parts = db.table(TABLE), db.table(CHUNK_TABLE)  # before the write transaction
    with db.begin(write=True) as txn:
        for done in fetched:
            prefix = f"{done.chain_id} {done.path}\0"
            if done.whole is not None:
                delete_prefix(txn, parts, prefix)
                txn.put(f"{done.chain_id} {done.path}".encode(), dumps(done.whole), db=files)
                continue
            for chunk in done.chunks:
                txn.put(f"{prefix}{chunk.offset:016x}".encode(), dumps(chunk.size), db=parts)


def flush_fetched(layer_dir: str | Path, done: Fetched) -> None:
    """Flush what ``write_file(..., sync=False)`` wrote of ``done`` (with its directory
    entry if the write created the file): afterwards it may be ``mark_fetched``."""
    with _parent_of(layer_dir, done.path) as (parent, name):
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if done.created:
            _sync_dir(parent)


def write_file(
    layer_dir: str | Path, entry: Entry, pieces: list[tuple[Chunk, bytes]], sync: bool = True
) -> bool:
    """Verified chunks into the lazy file ``entry`` (its index entry) at their offsets
    (holes stay holes). The file is created on its first fetch (``fsnap.lazy.skeleton``
    leaves it out) and given the index's metadata each time (a write moves its mtime).
    Then flushed (``sync``), with its directory when it was created: only after that may
    its chunks be ``mark_chunks`` (without ``sync``: after ``flush_fetched``). Whether
    the file was created. The path is the TOC's: ``NotContained`` if any of its parents
    is not a real directory of the layer (``_parent_of``)."""
    with _parent_of(layer_dir, entry.path) as (parent, name):
        try:
            fd, created = os.open(name, _CREATE_NEW, 0o600, dir_fd=parent), True
        except FileExistsError:
            fd, created = _open_existing(parent, name, entry.path), False
        try:
            os.ftruncate(fd, entry.size)
            for chunk, data in pieces:
                view = memoryview(data)
                offset = chunk.offset
                while view:
                    written = os.pwrite(fd, view, offset)
                    view, offset = view[written:], offset + written
            metadata.set_by_fd(fd, entry, os.geteuid() == 0)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if created and sync:
            _sync_dir(parent)
    return created


def _open_existing(parent: int, name: str, path: str) -> int:
    """The layer's regular file ``name`` in ``parent`` opened to write. Anything else there
    (a directory, a fifo, a device node: what a TOC naming ``path`` twice may have left)
    is ``NotContained`` and never opened (a fifo would block, a device act)."""
    if not stat.S_ISREG(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
        raise NotContained(f"lazy file {path!r}: not a regular file in its layer")
    return os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)


class NotContained(InvalidArgument):
    """A lazy file's path leads out of its layer's real directories (a hostile TOC)."""


@contextlib.contextmanager
def _parent_of(layer_dir: str | Path, path: str) -> Iterator[tuple[int, str]]:
    """The directory holding ``path`` (an index path of the layer), opened one component at
    a time from ``layer_dir`` without following any symlink, and the path's last name.

    A TOC names its files as it likes: ``a/x`` after a symlink ``a`` to ``/etc`` (the
    applier laid ``a/x`` out inside the layer, where ``a`` resolves from the layer's root)
    would, opened as one path string, be the host's ``/etc/x``. Only real directories are
    walked through: a symlink, a file or a missing directory on the way is
    ``NotContained``, never followed nor created."""
    *dirs, name = path.split("/")
    if not name or any(part in ("", ".", "..") for part in (*dirs, name)):
        raise NotContained(f"lazy file {path!r}: not a path inside its layer")
    fd = os.open(layer_dir, _WALK)
    try:
        for part in dirs:
            try:
                step = os.open(part, _WALK | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:  # a symlink is ENOTDIR here (O_PATH | O_DIRECTORY)
                if exc.errno not in (errno.ENOTDIR, errno.ENOENT, errno.ELOOP):
                    raise
                raise NotContained(
                    f"lazy file {path!r}: {part!r} on its way is no directory of its layer "
                    "(a symlink is not followed)"
                ) from None
            os.close(fd)
            fd = step
        yield fd, name
    finally:
        os.close(fd)


def _sync_dir(dir_fd: int) -> None:
    """fsync the directory ``dir_fd`` (an ``O_PATH`` descriptor) names."""
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
