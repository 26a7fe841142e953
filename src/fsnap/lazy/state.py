"""What makes a committed snapshot lazy, and which of its files are present.

A lazy layer is a committed snapshot (named by its chain ID, as any layer) whose directory
holds the tree of its TOC with empty files (``fsnap.lazy.skeleton``). It carries:

- the label ``LAZY_LABEL`` = the layer blob's digest (its presence is what "lazy" means;
  completing the layer removes it), and ``LAZY_REF_LABEL`` = the repository to fetch from;
- in its state directory (``Snapshotter.state_dir``, kept exactly as long as the snapshot)
  ``lazy.json``: the blob's descriptor, and the verified TOC JSON as fetched (``toc``).
  Both are written *before* the snapshot is committed, so a committed lazy snapshot always
  has them;
- rows in the LMDB table ``lazy``: ``<chain ID> <path>`` for each file whose contents are
  in the directory and verified. A row is written only after its data is on disk
  (fdatasync), so a crash can lose a fetch, never claim one.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsnap.db import Database
from fsnap.errors import FailedPrecondition
from fsnap.lazy.toc import Seekable, Toc, parse_toc, seekable
from fsnap.oci import Descriptor

LAZY_LABEL = "fsnap.io/lazy"
LAZY_REF_LABEL = "fsnap.io/lazy.ref"
STATE_FILE = "lazy.json"
TABLE = "lazy"


@dataclass
class LazyRecord:
    """A lazy layer's fixed facts: its blob, where it comes from, its TOC."""

    descriptor: Descriptor
    reference: str
    toc: Toc

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
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FailedPrecondition(f"lazy layer state in {state_dir} is unreadable: {e}") from None
    layer = seekable(desc.media_type, desc.size, desc.annotations)
    if layer is None:
        raise FailedPrecondition(f"lazy layer state in {state_dir}: blob is not seekable")
    toc = parse_toc(toc_json, layer, payload_end=payload_end)
    return LazyRecord(desc, str(doc["reference"]), toc)


def present(db: Database, chain_id: str) -> set[str]:
    """The paths of ``chain_id`` whose contents are fetched."""
    prefix = chain_id + " "
    return {key[len(prefix) :] for key, _ in db.items_json(TABLE, prefix)}


def mark_present(db: Database, chain_id: str, path: str, size: int) -> None:
    db.put_json(TABLE, f"{chain_id} {path}", size)


def forget(db: Database, chain_id: str) -> None:
    """Drop every row of ``chain_id`` (it completed, or it is removed)."""
    prefix = (chain_id + " ").encode()
    table = db.table(TABLE)  # before our write transaction: opening one takes its own
    with db.begin(write=True) as txn:
        cursor = txn.cursor(db=table)
        found = cursor.set_range(prefix)
        while found and bytes(cursor.key()).startswith(prefix):
            found = cursor.delete()
