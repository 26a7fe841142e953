"""Applying one compressed layer blob into a directory: decompress -> apply -> check diff ID.

Kept apart from ``fsnap.unpack.apply`` (snapshots, LMDB) so that an applier process
(``fsnap.unpack.worker``) imports only the archive code it runs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from fsnap.archive.apply import ApplyResult
from fsnap.archive.apply import apply_layer as apply_tar
from fsnap.archive.compression import open_uncompressed
from fsnap.errors import DigestMismatch
from fsnap.oci import Descriptor
from fsnap.unpack.limit import SizeLimit as SizeLimit


def apply_blob(
    raw: BinaryIO,
    desc: Descriptor,
    staging: Path,
    diff_id: str,
    *,
    interrupt: Callable[[], None] | None = None,
    sync: bool = True,
    limit: SizeLimit | None = None,
    stop: threading.Event | None = None,
) -> ApplyResult:
    """Decompress and apply ``raw`` (the blob of ``desc``) into the empty ``staging``; the
    uncompressed bytes must hash to ``diff_id`` (the config's), else ``DigestMismatch``.
    ``interrupt`` wakes a read of ``raw`` blocked in another thread when the apply fails
    (``apply_tar`` reads ahead in a thread). ``sync=False`` leaves flushing the tree to
    the caller (``sync_tree``), which must do it before the tree becomes a snapshot.
    ``limit`` caps what the layer may unpack to (see ``SizeLimit``; None: no cap); once
    ``stop`` is set the apply ends before its next member (``fsnap.unpack.stopping``)."""
    uncompressed = open_uncompressed(raw, desc.media_type)
    max_size = None if limit is None else limit.for_blob(desc.size)
    result = apply_tar(
        uncompressed, staging, interrupt=interrupt, sync=sync, max_size=max_size, stop=stop
    )
    if result.diff_id != diff_id:
        raise DigestMismatch(
            f"layer {desc.digest}: uncompressed content has diff_id {result.diff_id}, "
            f"the image config says {diff_id}"
        )
    return result
