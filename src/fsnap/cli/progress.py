"""Drawing progress: the CLI's side of ``fsnap.progress``.

The library reports typed observer calls; here they become rows of a ``Board`` (one per
blob: state, bytes done of its size, bytes applied, a note such as "retrying in 2 s: 503")
and a total (bytes, rate, time left), which a view draws:

- ``LiveView`` on a terminal: the board redrawn in place at most ``REFRESH_PER_SECOND``
  times a second, one line per blob, fitted to the width (narrow terminals drop columns,
  lines never wrap); when the operation ends the last frame stays, with the summary.
- ``PlainView`` otherwise (pipes, logs, CI): one line per state change, plus the byte count
  of every blob busy for longer than ``PLAIN_INTERVAL`` seconds, every that many seconds.

Only ``cli`` imports rich. A board is written by the operation (the trio loop, or the
committing thread) and read by the view's refresh thread: every access holds its lock.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Literal, TypeVar

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from fsnap.oci import Descriptor
from fsnap.progress import (
    CommitProgress,
    Meter,
    PullProgress,
    PushProgress,
    PushState,
    blob_kind,
    blob_label,
    human_size,
)

REFRESH_PER_SECOND = 4
# Without a terminal: a blob busy this long gets a byte count line, and again this often.
PLAIN_INTERVAL = 5.0
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
    "mounted",
    "pushed",
    "unpacked",
    "failed",
]
FINAL = frozenset({"done", "exists", "mounted", "pushed", "unpacked", "failed"})
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
            if state == "exists":
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


# -- the live view ----------------------------------------------------------------------------

# Columns by priority: what stays when the terminal is narrow (below these widths a column
# goes). Widths are fixed so that rows line up; the note is cut to fit, never wrapped.
STATE_WIDTH = 11
KIND_WIDTH = 8
WIDE = 120  # blob kind before the digest, a 30-cell bar, long byte words
BAR = 70  # a bar at all (16 cells from 80 columns, 10 below)
BYTES = 45  # byte counts


def bar(row: Row, width: int) -> Text:
    """``━`` cells: applied (green), fetched but not applied (yellow), the rest (dim)."""
    total = max(row.total, 1)
    fetched = min(width, round(width * row.moved() / total))
    if row.state in ("done", "exists", "pushed", "mounted", "unpacked"):
        fetched = width
    applied = row.applied_bytes()
    if row.state in ("downloading", "unpacking") and applied is not None:
        cells = min(fetched, round(width * applied / total))
    else:
        cells = fetched
    text = Text("━" * cells, style="green")
    text.append("━" * (fetched - cells), style="yellow")
    text.append("━" * (width - fetched), style="grey30")
    return text


def render_row(row: Row, width: int) -> Text:
    """One line of at most ``width`` cells: name, state, then as many columns as fit."""
    wide = width >= WIDE
    name = f"{row.kind.ljust(KIND_WIDTH)} {row.short}" if wide else row.short
    line = Text(f"{name} ", style="bold")
    line.append(row.state.ljust(STATE_WIDTH), style="red" if row.state == "failed" else "cyan")
    if width >= BAR:
        line.append(" ")
        line.append_text(bar(row, 30 if wide else 16 if width >= 80 else 10))
    if width >= BYTES:
        line.append(f" {row_words(row, wide)}")
    if row.note:
        line.append(f"  {row.note}", style="magenta" if row.state != "failed" else "red")
    line.truncate(width, overflow="ellipsis")
    return line


def render_board(board: Board, width: int) -> RenderableType:
    lines: list[RenderableType] = []
    if board.title:
        lines.append(_fit(Text(board.title, style="bold"), width))
    for row in board.snapshot():
        lines.append(render_row(row, width))
    footer = board.summary or total_line(board)
    lines.append(_fit(Text(footer), width))
    return Group(*lines)


def _fit(text: Text, width: int) -> Text:
    text.no_wrap = True
    text.truncate(width, overflow="ellipsis")
    return text


class LiveView:
    """The board redrawn in place on ``console`` (use as a context manager)."""

    def __init__(self, board: Board, console: Console) -> None:
        self.board = board
        self.console = console
        self._live = Live(
            console=console,
            get_renderable=self.render,
            refresh_per_second=REFRESH_PER_SECOND,
            transient=False,
        )

    def render(self) -> RenderableType:
        return render_board(self.board, self.console.width)

    def __enter__(self) -> LiveView:
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.stop()  # draws the last frame: every row's final state and the summary


# -- the plain view ----------------------------------------------------------------------------


class PlainView:
    """Lines for a pipe or a log; a ticker thread adds byte counts of long-busy blobs."""

    def __init__(self, board: Board, stream: IO[str]) -> None:
        self.board = board
        self.stream = stream
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, name="fsnap-progress", daemon=True)

    def say(self, text: str) -> None:
        with self.board.lock:
            print(text, file=self.stream, flush=True)

    def __enter__(self) -> PlainView:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _tick(self) -> None:
        while not self._stop.wait(0.5):
            self.counts()

    def counts(self) -> None:
        """Print the byte count of each blob busy for ``PLAIN_INTERVAL`` s since the last."""
        now = self.board.clock()
        with self.board.lock:
            for row in self.board.rows.values():
                if row.state in MOVING and now - max(row.since, row.told) >= PLAIN_INTERVAL:
                    row.told = now
                    print(
                        f"{row.kind}-{row.digest}: {row.state} {row_words(row)}",
                        file=self.stream,
                        flush=True,
                    )


# -- observers: the library's calls onto a board ---------------------------------------------


class Drawn:
    """The board an observer writes and the view that shows it (``say`` only when plain)."""

    def __init__(self, board: Board, plain: PlainView | None) -> None:
        self.board = board
        self.plain = plain

    def say(self, text: str) -> None:
        if self.plain is not None:
            self.plain.say(text)

    def retry(self, desc: Descriptor, reason: str, delay: float, restart: bool = False) -> None:
        note = f"retrying in {duration(delay)}: {reason}"
        self.board.retrying(desc, note, restart)
        self.say(f"{blob_label(desc)}: {note}")

    def unpacked(self, desc: Descriptor, chain_id: str) -> None:
        self.board.set_state(desc, "unpacked", "")
        self.say(f"{blob_label(desc)}: unpacked {chain_id}")

    def finish(self, verb: str, moved: int, elapsed: float) -> None:
        self.board.summary = summary_line(verb, moved, elapsed)
        self.say(self.board.summary)


class PullReporter(PullProgress, Drawn):
    def resolving(self, ref: str) -> None:
        self.board.title = f"{ref}: resolving"
        self.say(f"{ref}: resolving")

    def resolved(self, ref: str, desc: Descriptor) -> None:
        self.board.title = f"{ref}: {desc.digest}"
        self.say(f"{ref}: resolved {desc.digest}")

    def blob_waiting(self, desc: Descriptor) -> None:
        self.board.row(desc)

    def blob_started(self, desc: Descriptor, offset: int) -> None:
        resumed = f"resumed at {human_size(offset)}" if offset else ""
        self.board.set_state(desc, "downloading", resumed)
        self.board.row(desc).done = offset
        note = f" ({resumed})" if offset else ""
        self.say(f"{blob_label(desc)}: downloading {human_size(desc.size)}{note}")

    def blob_advanced(self, desc: Descriptor, offset: int) -> None:
        self.board.advance(desc, offset)

    def blob_retrying(self, desc: Descriptor, reason: str, delay: float) -> None:
        self.retry(desc, reason, delay)

    def blob_verifying(self, desc: Descriptor) -> None:
        row = self.board.row(desc)
        if row.applied is None:
            self.board.set_state(desc, "verifying")
        elif row.state == "downloading":  # the applier still has bytes to go
            self.board.set_state(desc, "unpacking")

    def blob_done(self, desc: Descriptor, state: Literal["done", "exists"]) -> None:
        row = self.board.row(desc)
        if row.applied is None or row.state in FINAL:
            self.board.set_state(desc, state, "")
        elif state == "exists":  # replayed from the store into the unpacker
            row.cached, row.done = True, row.total
        else:  # fetched, still being applied
            self.board.advance(desc, desc.size)
            self.board.set_state(desc, "unpacking")
        self.say(f"{blob_label(desc)}: {state}")

    def blob_failed(self, desc: Descriptor, reason: str) -> None:
        self.board.set_state(desc, "failed", reason)
        self.say(f"{blob_label(desc)}: failed: {reason}")

    def layer_unpacking(self, desc: Descriptor, applied: Meter) -> None:
        """While the blob still downloads the row stays ``downloading`` and shows both
        counts; the ``unpacking`` phase begins when the last byte is in."""
        row = self.board.row(desc)
        row.applied = applied
        if row.state != "downloading":
            self.board.set_state(desc, "unpacking")
            self.say(f"{blob_label(desc)}: unpacking")
        else:
            self.say(f"{blob_label(desc)}: unpacking while it downloads")

    def layer_verifying(self, desc: Descriptor) -> None:
        self.board.set_state(desc, "verifying")

    def layer_unpacked(self, desc: Descriptor, chain_id: str) -> None:
        self.unpacked(desc, chain_id)

    def finished(self, downloaded: int, elapsed: float) -> None:
        self.finish("pulled", downloaded, elapsed)


class PushReporter(PushProgress, Drawn):
    def blob_state(self, desc: Descriptor, state: PushState) -> None:
        self.board.set_state(desc, state, "" if state != "waiting" else None)
        size = f" {human_size(desc.size)}" if state == "uploading" else ""
        if state != "waiting":
            self.say(f"{blob_label(desc)}: {state}{size}")

    def blob_advanced(self, desc: Descriptor, offset: int) -> None:
        self.board.advance(desc, offset)

    def blob_retrying(self, desc: Descriptor, reason: str, delay: float) -> None:
        self.retry(desc, reason, delay, restart=True)  # an upload restarts from byte 0

    def manifest_pushed(self, desc: Descriptor, reference: str) -> None:
        self.board.set_state(desc, "pushed")
        self.say(f"{blob_label(desc)}: pushed as {reference}")

    def finished(self, pushed: int, elapsed: float) -> None:
        self.finish("pushed", pushed, elapsed)


# The new layer's row before its digest is known (while its tar is written).
_NEW_LAYER = Descriptor("application/vnd.oci.image.layer.v1.tar", "new layer", 0)


class CommitReporter(CommitProgress, Drawn):
    def scanned(self, entries: int, data_bytes: int) -> None:
        self.board.title = f"{entries} changed paths, {human_size(data_bytes)} of file data"
        self.say(self.board.title)

    def layer_writing(self, written: Meter, estimate: int) -> None:
        row = self.board.set_state(_NEW_LAYER, "writing")
        row.total, row.applied = estimate, written
        self.say(f"new layer: writing about {human_size(estimate)}")

    def blob_done(self, desc: Descriptor, state: Literal["done", "exists"]) -> None:
        with self.board.lock:
            self.board.rows.pop(_NEW_LAYER.digest, None)
        self.board.set_state(desc, state)
        self.board.moved += desc.size if state == "done" else 0
        self.say(f"{blob_label(desc)}: {state} {human_size(desc.size)}")

    def layer_unpacking(self, desc: Descriptor, applied: Meter) -> None:
        row = self.board.set_state(desc, "unpacking")
        row.applied = applied
        self.say(f"{blob_label(desc)}: unpacking")

    def layer_unpacked(self, desc: Descriptor, chain_id: str) -> None:
        self.unpacked(desc, chain_id)

    def finished(self, written: int, elapsed: float) -> None:
        self.finish("committed", written, elapsed)


# -- choosing a view ---------------------------------------------------------------------------

Mode = Literal["live", "plain", "quiet"]


def add_quiet_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="print only the final reference and digest"
    )


def mode_for(stream: IO[str], quiet: bool) -> Mode:
    if quiet:
        return "quiet"
    return "live" if stream.isatty() else "plain"


D = TypeVar("D", bound=Drawn)


@contextmanager
def reporting(
    observer: type[D], mode: Mode, stream: IO[str], console: Console | None = None
) -> Iterator[D]:
    """An ``observer`` (``PullReporter`` ...) whose board is drawn the way ``mode`` says
    until the block ends; then the live view's last frame (or the plain summary) stays."""
    board = Board()
    if mode == "live":
        with LiveView(board, console or Console(file=stream)):
            yield observer(board, None)
    elif mode == "plain":
        with PlainView(board, stream) as plain:
            yield observer(board, plain)
    else:
        yield observer(board, None)
