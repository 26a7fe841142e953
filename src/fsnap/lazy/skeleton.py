"""A lazy layer's directory and index, built from its TOC by the ordinary tar applier.

The TOC's entries become a tar in memory (every regular file with no contents), and
``fsnap.archive.apply.apply_layer`` applies it: directories, symlinks, hardlinks, devices,
whiteouts and opaque markers land exactly as a full unpack of the layer would lay them out,
through the same path containment, with the same "last entry wins" rules. Then the index
gets each file's real size from the TOC. A file's contents arrive later (``fsnap.lazy.fetch``
writes them into these very inodes, so hardlinks share them); until then the file is empty
on disk and only the lazy reader may serve it.
"""

from __future__ import annotations

import dataclasses
import io
import tarfile
from pathlib import Path

from fsnap.archive.apply import apply_layer
from fsnap.archive.entry import Entry
from fsnap.diff.tar import tarinfo_of
from fsnap.lazy.toc import Toc, TocEntry


def skeleton_tar(toc: Toc) -> bytes:
    """An uncompressed PAX tar of the TOC's entries, regular files all empty."""
    out = io.BytesIO()
    with tarfile.open(
        fileobj=out, mode="w", format=tarfile.PAX_FORMAT, errors="surrogateescape"
    ) as tar:
        for entry in toc.entries:
            tar.addfile(tarinfo_of(entry.meta))  # meta.size is ignored: no data follows
    return out.getvalue()


def build_skeleton(toc: Toc, staging: Path) -> list[Entry]:
    """Lay the TOC's tree out in the empty ``staging``; return the layer's index, with
    every file's size (and its hardlinks') as the TOC declares it."""
    result = apply_layer(io.BytesIO(skeleton_tar(toc)), staging, sync=False)
    sizes = {e.path: e.size for e in toc.entries if e.kind == "file"}
    index = {e.path: e for e in result.entries}
    out: list[Entry] = []
    for entry in result.entries:
        if entry.kind == "file":
            entry = dataclasses.replace(entry, size=sizes.get(entry.path, 0))
        elif entry.kind == "hardlink" and entry.link in index:
            entry = dataclasses.replace(entry, size=sizes.get(entry.link, 0))
        out.append(entry)
    return out


def file_paths(toc: Toc) -> dict[str, TocEntry]:
    """The files with contents, by index path (the last TOC entry for a path wins)."""
    return {e.path: e for e in toc.entries if e.kind == "file" and e.chunks}
