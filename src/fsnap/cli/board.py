"""A progress board: one row per blob and the operation's totals, and their words.

The model the views of ``fsnap.cli.progress`` (plain lines) and ``fsnap.cli.live`` (rich, on
a terminal) draw; it imports neither. A board is written by the operation (the trio loop,
or the committing thread) and read by a view's refresh thread: every access holds its lock.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from fsnap.oci import Descriptor
from fsnap.progress import Meter, blob_kind, human_size

# The rate (and so the time left) is measured over this many recent seconds.
RATE_WINDOW = 5.0
SHORT_DIGEST = 12  # hex digits, as docker shows them

State = Literal[
    "waiting",
    "downloading",
    "uploading",
    "writing",
    "unpacking",
    "verifying",
    "done",
    "exists",
    "lazy",
    "mounted",
    "pushed",
    "unpacked",
    "failed",
]
FINAL = frozenset({"done", "exists", "lazy", "mounted", "pushed", "unpacked", "failed"})
# Phases whose bytes grow: their rows get a bar and a byte count.
MOVING = frozenset({"downloading", "uploading", "writing", "unpacking", "verifying"})


@dataclass
class Row:
    """One blob as drawn: ``done`` of ``total`` bytes moved, ``applied`` unpacked."""

    digest: str
    kind: str
    total: int
    state: State = "waiting"
    done: int = 0
    applied: Meter | None = None
    note: str = ""
    cached: bool = False  # in the store before this run: not part of the totals
    retry_at: int | None = None  # where a retried download will go on from
    since: float = 0.0  # when the current busy phase began
    told: float = 0.0  # (plain view) when its byte count was last printed

    @property
    def short(self) -> str:
        return self.digest.partition(":")[2][:SHORT_DIGEST] or self.digest[:SHORT_DIGEST]

    def applied_bytes(self) -> int | None:
        return None if self.applied is None else min(self.applied.count, self.total)

    def moved(self) -> int:
        """Bytes of this row's current phase: fetched, uploaded, or written (a meter)."""
        if self.state == "writing" and self.applied is not None:
            return self.applied.count
        return min(self.done, self.total)


@dataclass
class Board:
    """Rows by digest in arrival order, and the totals of the whole operation."""

    clock: Callable[[], float] = time.monotonic
    title: str = ""
    rows: dict[str, Row] = field(default_factory=dict)
    moved: int = 0  # bytes moved in this run (resumed bytes excluded): the rate's numerator
    started: float = 0.0
    summary: str = ""
    lock: threading.RLock = field(default_factory=threading.RLock)
    samples: deque[tuple[float, int]] = field(default_factory=deque)  # (time, moved)

    def __post_init__(self) -> None:
        self.started = self.clock()

    def row(self, desc: Descriptor) -> Row:
        with self.lock:
            row = self.rows.get(desc.digest)
            if row is None:
                row = Row(desc.digest, blob_kind(desc.media_type), desc.size)
                self.rows[desc.digest] = row
            return row

    def set_state(self, desc: Descriptor, state: State, note: str | None = None) -> Row:
        with self.lock:
            row = self.row(desc)
            if state != row.state and state in MOVING:
                row.since = self.clock()
            row.state = state
            if state in ("exists", "lazy"):  # (no bytes of this pull's: out of its totals)
                row.cached = True
            if state in ("done", "exists", "pushed", "mounted", "unpacked"):
                row.done = row.total
            if note is not None:
                row.note = note
            return row

    def advance(self, desc: Descriptor, offset: int) -> Row:
        with self.lock:
            row = self.row(desc)
            self.moved += max(0, offset - row.done)
            row.done = offset
            self._sample()
            if row.retry_at is not None:  # bytes flow again after a retry
                resumed = row.retry_at
                row.note = f"resumed at {human_size(resumed)}" if resumed else ""
                row.retry_at = None
            return row

    def retrying(self, desc: Descriptor, note: str, restart: bool = False) -> Row:
        """A retry of the blob's transfer: from its first byte when ``restart``."""
        with self.lock:
            row = self.row(desc)
            if restart:
                row.done = 0
            row.note, row.retry_at = note, row.done
            return row

    def _sample(self) -> None:
        now = self.clock()
        self.samples.append((now, self.moved))
        while len(self.samples) > 2 and now - self.samples[1][0] >= RATE_WINDOW:
            self.samples.popleft()

    def rate(self) -> float:
        """Bytes per second over the last ``RATE_WINDOW`` s (the whole run until then):
        what the link does now, not what it did while the pull resolved."""
        now = self.clock()
        with self.lock:
            first = self.samples[0] if self.samples else (self.started, 0)
            moved = self.moved
        if now - first[0] < RATE_WINDOW or len(self.samples) < 2:
            first = (self.started, 0)
        elapsed = now - first[0]
        return (moved - first[1]) / elapsed if elapsed > 0 else 0.0

    def snapshot(self) -> list[Row]:
        with self.lock:
            return [Row(**vars(row)) for row in self.rows.values()]

    def totals(self) -> tuple[int, int, float, float | None]:
        """(bytes done, bytes in all, rate in bytes/s, seconds left or None)."""
        with self.lock:
            rows = list(self.rows.values())
        total = sum(r.total for r in rows if not r.cached)
        done = sum(r.moved() for r in rows if not r.cached)
        rate = self.rate()
        left = (total - done) / rate if rate > 0 and total > done else None
        return done, total, rate, left


# -- text ------------------------------------------------------------------------------------


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def sizes(done: int, total: int) -> str:
    """``41.0/134.0 MiB`` (``512.0 KiB/134.0 MiB`` when the units differ)."""
    left, right = human_size(done), human_size(total)
    number, _, unit = left.partition(" ")
    return f"{number}/{right}" if right.endswith(f" {unit}") else f"{left}/{right}"


def row_words(row: Row, wide: bool = True) -> str:
    """The byte part of a row: what moved and, while unpacking, what is applied (both
    while the layer is applied as it downloads; shorter unless ``wide``)."""
    applied = row.applied_bytes()
    if row.state in ("downloading", "unpacking") and applied is not None:
        if row.state == "unpacking" or row.done >= row.total:
            return f"applied {sizes(applied, row.total)}"
        if wide:
            return f"fetched {sizes(row.done, row.total)}, applied {sizes(applied, row.total)}"
        return f"{sizes(row.done, row.total)}, applied {human_size(applied)}"
    if row.state in MOVING or (row.state == "waiting" and row.done):
        return sizes(row.moved(), row.total)
    return human_size(row.total)


def total_line(board: Board) -> str:
    done, total, rate, left = board.totals()
    elapsed = board.clock() - board.started
    eta = f", {duration(left)} left" if left is not None else ""
    return f"total {sizes(done, total)}, {human_size(rate)}/s{eta}, elapsed {duration(elapsed)}"


def summary_line(verb: str, moved: int, elapsed: float) -> str:
    rate = moved / elapsed if elapsed > 0 else 0.0
    return f"{verb}: {human_size(moved)} in {duration(elapsed)} ({human_size(rate)}/s)"
