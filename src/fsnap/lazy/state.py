"""What makes a committed snapshot lazy, and which of its files are present.

A lazy layer is a committed snapshot (named by its chain ID, as any layer) whose directory
holds the tree of its TOC without the files still to fetch (``fsnap.lazy.skeleton``); its
index has them all. It carries:

- the label ``LAZY_LABEL`` = the layer blob's digest (its presence is what "lazy" means;
  completing the layer removes it), and ``LAZY_REF_LABEL`` = the repository to fetch from;
- in its state directory (``Snapshotter.state_dir``, kept exactly as long as the snapshot)
  ``lazy.json``: the blob's descriptor, and the verified TOC JSON as fetched (``toc``).
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
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsnap.archive import metadata
from fsnap.archive.entry import Entry
from fsnap.db import Database, delete_prefix, dumps
from fsnap.errors import FailedPrecondition
from fsnap.labels import LAZY_LABEL
from fsnap.lazy.toc import Chunk, Seekable, Toc, parse_toc, seekable
from fsnap.oci import Descriptor
from fsnap.snapshots.info import Info
from fsnap.snapshots.snapshotter import OWNED_TABLES, LocalSnapshotter

STATE_FILE = "lazy.json"
# The snapshotter drops a snapshot's rows of both when it removes it.
TABLE, CHUNK_TABLE = OWNED_TABLES
_CREATE_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class LazyRecord:
    """A lazy layer's fixed facts: its blob, where it comes from, its TOC."""

    descriptor: Descriptor
    reference: str
    toc: Toc
    diff_id: str  # what the image config says the blob's tar hashes to

    @property
    def layer(self) -> Seekable:
        found = seekable(
            self.descriptor.media_type, self.descriptor.size, self.descriptor.annotations
        )
        assert found is not None
        return found


def write_record(state_dir: Path, record: LazyRecord) -> None:
    """``lazy.json`` in ``state_dir``, written atomically and flushed."""
    doc: dict[str, Any] = {
        "descriptor": record.descriptor.to_json(),
        "reference": record.reference,
        "diff_id": record.diff_id,
        "payload_end": record.toc.payload_end,
        "toc": base64.b64encode(record.toc.raw).decode(),
    }
    temp = state_dir / (STATE_FILE + ".tmp")
    with open(temp, "w") as out:
        json.dump(doc, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temp, state_dir / STATE_FILE)


def read_record(state_dir: Path) -> LazyRecord:
    """The record ``write_record`` left; the TOC is parsed (and checked) again."""
    try:
        doc = json.loads((state_dir / STATE_FILE).read_text())
        desc = Descriptor.from_json(doc["descriptor"])
        toc_json = base64.b64decode(doc["toc"])
        payload_end = int(doc["payload_end"])
        diff_id = str(doc["diff_id"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FailedPrecondition(f"lazy layer state in {state_dir} is unreadable: {e}") from None
    layer = seekable(desc.media_type, desc.size, desc.annotations)
    if layer is None:
        raise FailedPrecondition(f"lazy layer state in {state_dir}: blob is not seekable")
    toc = parse_toc(toc_json, layer, payload_end=payload_end)
    return LazyRecord(desc, str(doc["reference"]), toc, diff_id)


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
        record = read_record(snapshots.state_dir(info.name))
        total = sum(e.size for e in record.toc.entries if e.chunks)
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
    files, parts = db.table(TABLE), db.table(CHUNK_TABLE)  # before the write transaction
    prefix = f"{chain_id} {path}\0"
    with db.begin(write=True) as txn:
        if whole is not None:
            delete_prefix(txn, parts, prefix)
            txn.put(f"{chain_id} {path}".encode(), dumps(whole), db=files)
            return
        for chunk in chunks:
            txn.put(f"{prefix}{chunk.offset:016x}".encode(), dumps(chunk.size), db=parts)


def write_file(
    layer_dir: str | Path, entry: Entry, pieces: list[tuple[Chunk, bytes]], sync: bool = True
) -> None:
    """Verified chunks into the lazy file ``entry`` (its index entry) at their offsets
    (holes stay holes). The file is created on its first fetch (``fsnap.lazy.skeleton``
    leaves it out) and given the index's metadata each time (a write moves its mtime).
    Then flushed (``sync``), with its directory when it was created: only after that may
    its chunks be ``mark_chunks``."""
    target = os.path.join(layer_dir, entry.path)
    try:
        fd, created = os.open(target, _CREATE_NEW, 0o600), True
    except FileExistsError:
        fd, created = os.open(target, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC), False
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
        _sync_dir(os.path.dirname(target))


def _sync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
