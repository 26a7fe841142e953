"""Drawing progress: the CLI's side of ``fsnap.progress``.

The library reports typed observer calls; here they become rows of a ``Board``
(``fsnap.cli.board``: one row per blob with its state, bytes done of its size, bytes
applied, a note such as "retrying in 2 s: 503", and a total: bytes, rate, time left),
which a view draws:

- ``LiveView`` on a terminal (``fsnap.cli.live``): the board redrawn in place, one line per
  blob, fitted to the width (narrow terminals drop columns, lines never wrap); when the
  operation ends the last frame stays, with the summary.
- ``PlainView`` otherwise (pipes, logs, CI): one line per state change, plus the byte count
  of every blob busy for longer than ``PLAIN_INTERVAL`` seconds, every that many seconds.

Only ``cli.live`` imports rich, and ``reporting`` imports it only for a live view: the
parsers, ``--quiet`` and piped output do without it (35-95 ms of start-up).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Literal, TypeVar

from fsnap.cli.board import FINAL, MOVING, Board, duration, row_words, summary_line
from fsnap.oci import Descriptor
from fsnap.progress import (
    CommitProgress,
    Meter,
    PullProgress,
    PushProgress,
    PushState,
    blob_label,
    human_size,
)

if TYPE_CHECKING:
    from rich.console import Console

# Without a terminal: a blob busy this long gets a byte count line, and again this often.
PLAIN_INTERVAL = 5.0


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

    def blob_done(self, desc: Descriptor, state: Literal["done", "exists", "lazy"]) -> None:
        row = self.board.row(desc)
        if row.applied is None or row.state in FINAL or state == "lazy":
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
        counts; the ``unpacking`` phase begins when the last byte is in. A lazy layer's
        row stays ``lazy``: its snapshot is made from the TOC, none of its bytes are here."""
        row = self.board.row(desc)
        if row.state == "lazy":
            return
        row.applied = applied
        if row.state != "downloading":
            self.board.set_state(desc, "unpacking")
            self.say(f"{blob_label(desc)}: unpacking")
        else:
            self.say(f"{blob_label(desc)}: unpacking while it downloads")

    def layer_verifying(self, desc: Descriptor) -> None:
        if self.board.row(desc).state == "lazy":
            return
        self.board.set_state(desc, "verifying")

    def layer_unpacked(self, desc: Descriptor, chain_id: str) -> None:
        if self.board.row(desc).state == "lazy":
            self.say(f"{blob_label(desc)}: unpacked {chain_id} from its table of contents")
            return
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
        from rich.console import Console

        from fsnap.cli.live import LiveView

        with LiveView(board, console or Console(file=stream)):
            yield observer(board, None)
    elif mode == "plain":
        with PlainView(board, stream) as plain:
            yield observer(board, plain)
    else:
        yield observer(board, None)
