"""A lazy layer's directory and index, built from its TOC by the ordinary applier.

The TOC's entries become tar headers (no data) that ``fsnap.archive.apply.apply_headers``
applies: directories, symlinks, devices, empty files, whiteouts and opaque markers land
exactly as a full unpack of the layer would lay them out, through the same path
containment, with the same "last entry wins" rules. The regular files with contents (and
hardlinks to them) are *not created*: they are in the index only until their contents
arrive (``fsnap.lazy.state.write_file`` creates the file, ``fsnap.lazy.complete`` the
hardlinks). The index gets each file's real size from the TOC, so the mount serves the
tree before any file exists on disk; only the lazy reader may serve those files.

That index is keyed by the TOC's names, so two layouts cannot be served from it, and
``build_skeleton`` refuses them with ``NotLazy`` (the layer is then pulled in full, see
``fsnap.unpack.unpacker``): a file with contents that the applier lays out at another path
than its TOC name (through a symlink of the layer: ``a`` -> ``sub``, then ``a/kept``), and a
hardlink that keeps the inode of a file a later entry replaces (the link's bytes are the old
file's, which no TOC name holds any more).
"""

from __future__ import annotations

import dataclasses
import tarfile
from collections.abc import Iterator
from pathlib import Path

from fsnap.archive.apply import apply_headers
from fsnap.archive.entry import Entry
from fsnap.diff.tar import tarinfo_of
from fsnap.lazy.toc import Toc, TocEntry


class NotLazy(Exception):
    """The layer's tree cannot be served from its TOC (see the module docstring); the
    message says why. Not an error: the caller pulls the layer in full instead."""


def skeleton_headers(toc: Toc, current: list[TocEntry] | None = None) -> Iterator[tarfile.TarInfo]:
    """The TOC's entries as tar headers; a file with contents declares its size. Each
    entry is put in ``current`` (one slot) while its header is applied."""
    for entry in toc.entries:
        info = tarinfo_of(entry.meta)
        if entry.chunks:
            info.size = entry.size
        if current is not None:
            current[:] = [entry]
        yield info


def build_skeleton(toc: Toc, staging: Path) -> list[Entry]:
    """Lay the TOC's tree out in the empty ``staging`` (its files with contents left out,
    see the module docstring); return the layer's index, with every file's size (and its
    hardlinks') as the TOC declares it. ``NotLazy`` if the layout is one the index cannot
    serve (the caller removes ``staging``)."""
    paths = toc.file_paths()
    current: list[TocEntry] = []

    def defer(path: str) -> bool:
        if current and current[0].path != path:
            raise NotLazy(f"file {current[0].name!r} lands at {path!r} (through a symlink)")
        return path in paths

    entries = apply_headers(skeleton_headers(toc, current), staging, defer)
    for entry in entries:
        if entry.kind == "file" and entry.size and entry.path not in paths:
            raise NotLazy(f"hardlink {entry.path!r} keeps the bytes of a replaced file")
    sizes = {e.path: e.size for e in toc.entries if e.kind == "file"}
    index = {e.path: e for e in entries}
    out: list[Entry] = []
    for entry in entries:
        if entry.kind == "file":
            entry = dataclasses.replace(entry, size=sizes.get(entry.path, 0))
        elif entry.kind == "hardlink" and entry.link in index:
            entry = dataclasses.replace(entry, size=sizes.get(entry.link, 0))
        out.append(entry)
    return out
