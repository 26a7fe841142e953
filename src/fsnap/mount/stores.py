"""The stores a mount serves from (``fsnap.Client.mount_stores`` makes them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fsnap.content.store import ContentStore
    from fsnap.db import Database
    from fsnap.mount.registry import WritableMounts
    from fsnap.snapshots.snapshotter import LocalSnapshotter


@dataclass(frozen=True)
class MountStores:
    """What the manager works on: the fsnap ``root`` (mount records under ``mounts/``; no
    mount point may lie inside it), the ``snapshots`` it mounts, the record of which are
    mounted ``writable``, and for lazy layers (``fsnap.lazy``) the ``content`` store and
    the ``db`` that records what was fetched."""

    root: Path
    snapshots: LocalSnapshotter
    writable: WritableMounts
    content: ContentStore
    db: Database
