"""A lazy layer's directory and index, built from its TOC by the ordinary applier.

The TOC's entries become tar headers (no data) that ``fsnap.archive.apply.apply_headers``
applies: directories, symlinks, devices, empty files, whiteouts and opaque markers land
exactly as a full unpack of the layer would lay them out, through the same path
containment, with the same "last entry wins" rules. The regular files with contents (and
hardlinks to them) are *not created*: they are in the index only until their contents
arrive (``fsnap.lazy.state.write_file`` creates the file, ``fsnap.lazy.complete`` the
hardlinks). The index gets each file's real size from the TOC, so the mount serves the
tree before any file exists on disk; only the lazy reader may serve those files.
"""

from __future__ import annotations

import dataclasses
import tarfile
from collections.abc import Iterator
from pathlib import Path

from fsnap.archive.apply import apply_headers
from fsnap.archive.entry import Entry
from fsnap.diff.tar import tarinfo_of
from fsnap.lazy.toc import Toc


def skeleton_headers(toc: Toc) -> Iterator[tarfile.TarInfo]:
    """The TOC's entries as tar headers; a file with contents declares its size."""
    for entry in toc.entries:
        info = tarinfo_of(entry.meta)
        if entry.chunks:
            info.size = entry.size
        yield info


def build_skeleton(toc: Toc, staging: Path) -> list[Entry]:
    """Lay the TOC's tree out in the empty ``staging`` (its files with contents left out,
    see the module docstring); return the layer's index, with every file's size (and its
    hardlinks') as the TOC declares it."""
    paths = toc.file_paths()
    entries = apply_headers(skeleton_headers(toc), staging, paths.__contains__)
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
