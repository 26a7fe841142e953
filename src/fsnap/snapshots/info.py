"""What the snapshotter hands out: kinds, snapshot info, mounts and usage.

These mirror containerd's ``snapshots.Info``/``Usage`` and ``mount.Mount``, reduced to what
fsnap needs. ``Mounts`` is a description, not an action: fsnap's FUSE mount (or a plain
directory copy in tests) turns it into a merged tree.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Snapshots another program owns through fsnap's snapshotter API (``fsnap serve``: the
# value names it, e.g. ``containerd``). That program removes them when it no longer needs
# them, so ``fsnap gc`` treats them as roots.
OWNER_LABEL = "fsnap.io/owner"


class Kind(enum.StrEnum):
    """The three states of a snapshot (containerd's KindCommitted/KindActive/KindView)."""

    COMMITTED = "committed"
    ACTIVE = "active"
    VIEW = "view"


@dataclass
class Info:
    """Metadata of one snapshot. ``name`` is the key of an active/view snapshot or the name
    of a committed one (they share one namespace). ``parent`` is ``""`` for a base."""

    name: str
    kind: Kind
    parent: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    created: datetime = field(default_factory=lambda: datetime.now(UTC))
    updated: datetime = field(default_factory=lambda: datetime.now(UTC))

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (times in RFC 3339, UTC) for ``--json`` output."""
        return {
            "name": self.name,
            "kind": self.kind.value,
            "parent": self.parent,
            "labels": dict(self.labels),
            "created": self.created.isoformat(),
            "updated": self.updated.isoformat(),
        }


@dataclass
class Mounts:
    """The overlay a snapshot stands for, as overlayfs would take it.

    ``lowers`` are read-only layer directories, *top first* (overlayfs ``lowerdir`` order).
    ``upper``/``work`` are set for an active snapshot only; ``readonly`` is set for views and
    committed snapshots. A base active snapshot has no lowers: its upper is the whole tree.
    """

    lowers: list[Path]
    upper: Path | None
    work: Path | None
    readonly: bool


@dataclass(frozen=True)
class Usage:
    """Disk usage of one snapshot's own directory (not its parents).

    ``size`` is bytes allocated on disk (``st_blocks * 512``, as ``du``), ``inodes`` counts
    every entry including the root; a hard-linked inode counts once.
    """

    size: int = 0
    inodes: int = 0

    def to_json(self) -> dict[str, int]:
        return {"size": self.size, "inodes": self.inodes}
