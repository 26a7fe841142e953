"""The ``-o`` option string of overlayfs and fuse-overlayfs, split into what fsnap uses.

``lowerdir=L1:L2:...`` lists the lower directories *top first* (L1 hides L2), as the
kernel reads it; ``upperdir`` and ``workdir`` make the mount writable (without them it is
read-only). Options FUSE knows (``allow_other``, ``nodev``, ...) pass through to the
mount; the rest are the tuning knobs of kernel overlayfs or fuse-overlayfs (``index=``,
``squash_to_root``, ``context=`` ...), which fsnap ignores as fuse-overlayfs ignores the
kernel's. A backslash escapes a comma or a colon inside a path.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from fsnap.errors import InvalidArgument

# Options libfuse's mount accepts; everything else is dropped (listed in ``ignored``).
FUSE_FLAGS = frozenset(
    {
        "ro",
        "rw",
        "suid",
        "nosuid",
        "dev",
        "nodev",
        "exec",
        "noexec",
        "atime",
        "noatime",
        "diratime",
        "nodiratime",
        "relatime",
        "norelatime",
        "strictatime",
        "nostrictatime",
        "sync",
        "async",
        "dirsync",
        "allow_other",
        "allow_root",
        "default_permissions",
        "auto_unmount",
    }
)
FUSE_VALUED = frozenset({"fsname", "subtype", "max_read", "blksize"})
_UNESCAPED_COMMA = re.compile(r"(?<!\\),")
_UNESCAPED_COLON = re.compile(r"(?<!\\):")


@dataclass
class OverlayOptions:
    """What one command line asks for: the layer stack and the FUSE options to pass on."""

    lower: list[Path] = field(default_factory=list)  # top first, as given
    upper: Path | None = None
    work: Path | None = None
    fuse: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    @property
    def writable(self) -> bool:
        return self.upper is not None


def _unescape(text: str) -> str:
    return text.replace("\\,", ",").replace("\\:", ":")


def _dir(text: str) -> Path:
    """A directory option as an absolute path: the daemon leaves the caller's cwd."""
    return Path(os.path.abspath(_unescape(text)))


def parse(option_strings: list[str]) -> OverlayOptions:
    """Fold every ``-o`` string (comma-separated, later ones win) into ``OverlayOptions``.

    Raises ``InvalidArgument`` when the stack cannot be mounted: no lower directory, or an
    upper directory without a work directory (or the other way round)."""
    found = OverlayOptions()
    for text in option_strings:
        for item in _UNESCAPED_COMMA.split(text):
            if item:
                _take(found, item)
    if not found.lower:
        raise InvalidArgument("missing lowerdir=DIR[:DIR...] in -o")
    if (found.upper is None) != (found.work is None):
        raise InvalidArgument("upperdir and workdir go together: give both or neither")
    return found


def _take(found: OverlayOptions, item: str) -> None:
    key, eq, value = item.partition("=")
    if key == "lowerdir":
        found.lower = [_dir(d) for d in _UNESCAPED_COLON.split(value) if d]
    elif key == "upperdir":
        found.upper = _dir(value) if value else None
    elif key == "workdir":
        found.work = _dir(value) if value else None
    elif (not eq and key in FUSE_FLAGS) or (eq and key in FUSE_VALUED):
        found.fuse.append(item)
    else:
        found.ignored.append(item)
