"""Completing an eStargz layer in one pass over its blob: inflated once, hashed and filled.

An eStargz blob is a sequence of gzip members (one per file or chunk, then the TOC and the
footer); inflated one after another they are the layer's tar. So one pass over the blob,
front to back, can both hash the tar (the diff_id ``fsnap.lazy.complete`` must check) and
hand each chunk still missing from the layer, which starts a member (its TOC ``offset``),
to its file, verified against its chunk digest as a read verifies it. Before this, the
completion inflated the whole blob for the diff_id and then every missing file's chunks a
second time; the mount's background download now feeds this pass as the bytes arrive,
so the work overlaps the network instead of following it.

``feed`` takes the blob's bytes in order from byte 0; ``finish`` gives the diff_id once the
whole blob went through, or None when this pass cannot vouch for the layer: a
zstd:chunked blob (its frames are left to the two-pass way), bytes fed out of order, a
member that does not inflate, a chunk that does not verify or does not start a member, a
write that failed. The caller then completes the layer the two-pass way, from the stored
blob, which says what is wrong. Files written meanwhile hold only chunk-verified bytes,
and no LMDB row claims them: until the layer is completed, reads fetch them as before.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import cast

from isal import isal_zlib

from fsnap.archive.entry import Entry
from fsnap.errors import DigestMismatch
from fsnap.lazy.chunks import checked
from fsnap.lazy.state import LazyRecord, write_file
from fsnap.lazy.toc import Chunk

log = logging.getLogger(__name__)
_INFLATE_ERROR = cast("type[Exception]", isal_zlib.error)


class OnePass:
    """One eStargz layer's completion work, fed its blob in order (see the module doc).

    ``targets``: the files to fill (their index entries) with their chunks, as
    ``fsnap.lazy.complete.fill_targets`` lists them. Not thread-safe: one feeder."""

    def __init__(
        self, record: LazyRecord, layer_dir: Path, targets: list[tuple[Entry, tuple[Chunk, ...]]]
    ) -> None:
        self.ok = record.layer.format == "estargz"
        self.size = record.descriptor.size
        self.layer_dir = layer_dir
        self.targets = targets
        self._wanted: dict[int, list[tuple[Entry, Chunk]]] = {}
        for entry, chunks in targets:
            for chunk in chunks:
                if not chunk.zeros:
                    self._wanted.setdefault(chunk.start, []).append((entry, chunk))
        self._hash = hashlib.sha256()
        self._fed = 0  # blob bytes fed so far
        self._member = 0  # blob offset where the member being inflated starts
        self._parts: list[bytes] = []  # its output so far, when a wanted chunk starts it
        self._inflater = isal_zlib.decompressobj(wbits=31)
        self._at_boundary = True  # the last member ended exactly where the bytes fed end

    def feed(self, offset: int, data: bytes) -> None:
        """The blob's bytes from ``offset`` on (which must be where the last feed ended)."""
        if not self.ok or not data:
            return
        if offset != self._fed:
            self.give_up(f"bytes fed at {offset}, expected {self._fed}")
            return
        self._fed += len(data)
        try:
            self._inflate(data)
        except (_INFLATE_ERROR, DigestMismatch, OSError) as exc:
            self.give_up(str(exc))

    def finish(self) -> str | None:
        """The blob's diff_id (``sha256:`` of its tar), every target file filled; None if
        this pass cannot vouch for the layer (see the module docstring)."""
        if self.ok and (self._fed != self.size or not self._at_boundary or self._wanted):
            self.give_up("the blob ended before its last member or a wanted chunk")
        if not self.ok:
            return None
        try:
            for entry, chunks in self.targets:
                if all(c.zeros for c in chunks):  # nothing fetched: holes (or empty) only
                    write_file(self.layer_dir, entry, [], sync=False)
        except OSError as exc:
            self.give_up(str(exc))
            return None
        return "sha256:" + self._hash.hexdigest()

    def give_up(self, why: str) -> None:
        """From now on ``finish`` says None (the two-pass way completes the layer)."""
        if self.ok:
            log.info("one-pass completion given up (%s): two passes instead", why)
        self.ok = False
        self._parts = []

    def _inflate(self, data: bytes) -> None:
        while data:
            self._at_boundary = False
            out = self._inflater.decompress(data)
            self._hash.update(out)
            if self._member in self._wanted:
                self._parts.append(out)
            if not self._inflater.eof:
                return
            rest = self._inflater.unused_data
            self._member_done()
            self._member = self._fed - len(rest)
            self._inflater = isal_zlib.decompressobj(wbits=31)
            self._at_boundary = True
            data = rest

    def _member_done(self) -> None:
        """The member that started at ``_member`` is whole: its chunks into their files."""
        wanted = self._wanted.pop(self._member, None)
        if wanted is None:
            return
        plain = b"".join(self._parts)
        self._parts = []
        for entry, chunk in wanted:
            write_file(self.layer_dir, entry, [(chunk, checked(chunk, plain))], sync=False)
