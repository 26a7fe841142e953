"""The live view of a progress ``Board``: rich redraws it in place on a terminal.

Split from ``fsnap.cli.progress`` so that only a live view imports rich (35-95 ms of
``python -X importtime`` on a loaded 2-core machine): ``fsnap pull --help``, ``--quiet`` and
piped output, and every other command's parser, do without it.
"""

from __future__ import annotations

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from fsnap.cli.board import Board, Row, row_words, total_line

# Redraws of the board a second, at most.
REFRESH_PER_SECOND = 4

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
