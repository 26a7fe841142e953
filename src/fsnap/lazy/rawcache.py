"""The compressed bytes a mount fetched on demand, kept for the layer's completion.

An on-demand read fetches ranges of the layer's blob (``fsnap.lazy.fetch``); the
background completion needs the whole blob, in order, to verify its digest. ``RawCache``
keeps what the reads fetched (in an unlinked file: nothing to clean after a crash) so the
completion copies those ranges instead of fetching them again. It lives as long as the
mount; a new mount starts with an empty one (the completion's own partial blob is resumed
from the content store's ingest).

Its calls come from trio's worker threads (the reads', the prefetch's, the completion's)
and may cross: a read's ``holds`` then ``read`` while another read, finding bad bytes,
or the completion, closes it. Each call holds a lock, and ``read`` of a range no
longer held is ``Unavailable`` (fetch it): bytes or that, never another exception.
"""

from __future__ import annotations

import bisect
import os
import tempfile
import threading
from pathlib import Path
from typing import IO

from fsnap.errors import Unavailable


class RawCache:
    """Ranges ``[start, end)`` of one blob, stored at their own offsets in a sparse file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._file: IO[bytes] | None = None
        self._ranges: list[tuple[int, int]] = []  # sorted, disjoint, not touching
        self._lock = threading.Lock()

    def put(self, start: int, data: bytes) -> None:
        """Keep ``data``, the blob's bytes from ``start``. Blocking: call it in a thread."""
        if not data:
            return
        with self._lock:
            if self._file is None:
                # Open for the cache's life (``close`` ends it), unlinked from the start.
                self._file = tempfile.TemporaryFile(dir=self.directory)  # noqa: SIM115
            view = memoryview(data)
            offset = start
            while view:
                written = os.pwrite(self._file.fileno(), view, offset)
                view, offset = view[written:], offset + written
            self._add(start, start + len(data))

    def pieces(self, start: int, end: int, min_held: int = 0) -> list[tuple[int, int, bool]]:
        """``[start, end)`` cut into consecutive pieces, each held here (True) or not; a
        held piece shorter than ``min_held`` between others counts as not held (fetching
        it with its neighbours is cheaper than one more request)."""
        out: list[tuple[int, int, bool]] = []
        for first, last, held in self._pieces(start, end):
            short = held and last - first < min_held and first != start and last != end
            held = held and not short
            if out and not held and not out[-1][2]:
                out[-1] = (out[-1][0], last, False)
            else:
                out.append((first, last, held))
        return out

    def _pieces(self, start: int, end: int) -> list[tuple[int, int, bool]]:
        out: list[tuple[int, int, bool]] = []
        position = start
        index = bisect.bisect_right(self._ranges, (start, end)) - 1
        for first, last in self._ranges[max(index, 0) :]:
            if first >= end:
                break
            if last <= position:
                continue
            if first > position:
                out.append((position, first, False))
            out.append((max(first, position), min(last, end), True))
            position = min(last, end)
        if position < end:
            out.append((position, end, False))
        return out

    def holds(self, start: int, end: int) -> bool:
        return self._pieces(start, end) == [(start, end, True)]

    def read(self, start: int, end: int) -> bytes:
        """Bytes ``pieces`` said are held; ``Unavailable`` if they are not any more (a
        ``close`` came between). Blocking: call it in a thread."""
        with self._lock:
            if self._file is None or not self.holds(start, end):
                raise Unavailable(f"bytes {start}-{end} of the blob are no longer kept")
            return os.pread(self._file.fileno(), end - start, start)

    def held(self) -> int:
        return sum(last - first for first, last in self._ranges)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
            self._ranges = []

    def _add(self, start: int, end: int) -> None:
        kept: list[tuple[int, int]] = []
        for first, last in self._ranges:
            if last < start or first > end:
                kept.append((first, last))
            else:
                start, end = min(start, first), max(end, last)
        bisect.insort(kept, (start, end))
        self._ranges = kept
