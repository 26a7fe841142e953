"""The progress board drawn by rich's recording console at several widths, and the plain
lines: assertions on the text (a clock the test moves), never on timing."""

from __future__ import annotations

import io

import pytest
from rich.console import Console, Group

from fsnap.cli.board import Board
from fsnap.cli.live import LiveView, render_board
from fsnap.cli.progress import (
    CommitReporter,
    PlainView,
    PullReporter,
    PushReporter,
)
from fsnap.oci import Descriptor
from fsnap.progress import ByteMeter

MiB = 1 << 20
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG = "application/vnd.oci.image.config.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def desc(char: str, size: int, media_type: str = LAYER) -> Descriptor:
    return Descriptor(media_type, "sha256:" + char * 64, size)


BIG, APPLYING, CACHED, QUEUED, FLAKY, BROKEN, STORED = (
    desc("a", 134 * MiB),
    desc("b", 40 * MiB),
    desc("c", 5 * MiB),
    desc("d", 7 * MiB),
    desc("e", 10 * MiB),
    desc("f", 3 * MiB),
    desc("7", 6 * MiB),
)
LAYERS = (BIG, APPLYING, CACHED, QUEUED, FLAKY, BROKEN, STORED)
CFG = desc("9", 1234, CONFIG)


def busy_pull() -> tuple[Board, Clock]:
    """A pull 10 s in: one layer of each state."""
    clock = Clock()
    board = Board(clock)
    pull = PullReporter(board, None)
    pull.resolving("127.0.0.1:5000/big:1")
    pull.resolved("127.0.0.1:5000/big:1", desc("0", 500, MANIFEST))
    for layer in LAYERS:
        pull.blob_waiting(layer)
    pull.blob_started(CFG, 0)
    pull.blob_advanced(CFG, CFG.size)
    pull.blob_done(CFG, "done")
    pull.blob_started(BIG, 0)
    pull.blob_started(APPLYING, 0)
    meter = ByteMeter()
    pull.layer_unpacking(APPLYING, meter)
    pull.blob_done(CACHED, "exists")
    pull.blob_started(FLAKY, 3 * MiB)  # an earlier pull's ingest resumes
    pull.blob_started(BROKEN, 0)
    clock.now += 10
    pull.blob_advanced(BIG, 41 * MiB)
    pull.blob_advanced(APPLYING, 20 * MiB)
    meter.count = 8 * MiB
    pull.blob_failed(BROKEN, "digest mismatch")
    pull.blob_done(STORED, "exists")
    pull.layer_unpacking(STORED, stored := ByteMeter())
    stored.count = 3 * MiB
    return board, clock


def drawn(board: Board, width: int) -> list[str]:
    console = Console(record=True, width=width, file=io.StringIO(), color_system="truecolor")
    console.print(render_board(board, width))
    return console.export_text().splitlines()


@pytest.mark.parametrize("width", [40, 80, 120, 200])
def test_every_width_fits_and_names_every_blob(width: int) -> None:
    board, _ = busy_pull()
    lines = drawn(board, width)
    assert all(len(line) <= width for line in lines), lines  # never wraps
    assert len(lines) == 1 + 8 + 1  # title, a line per blob, the total
    for blob in (*LAYERS, CFG):
        short = blob.digest[7:19]
        assert sum(line.startswith(short) or f" {short}" in line for line in lines) == 1
    states = "".join(lines)
    for state in ("downloading", "unpacking", "exists", "waiting", "failed", "done"):
        assert state in states, lines


def test_narrow_terminal_drops_bar_and_bytes() -> None:
    board, _ = busy_pull()
    lines = drawn(board, 40)
    assert not any("━" in line for line in lines)
    assert not any("/134.0" in line or "MiB" in line for line in lines[1:-1])


def test_80_columns_show_bytes_and_a_bar_that_reflects_them() -> None:
    board, _ = busy_pull()
    lines = drawn(board, 80)
    big = next(line for line in lines if "aaaaaaaaaaaa" in line)
    assert "downloading" in big
    assert "41.0/134.0 MiB" in big
    cells = big.count("━")
    assert cells >= 10
    # The bar's colours are its meaning; its length is fixed. Filled share: 41/134.
    console = Console(width=80, file=io.StringIO(), color_system="truecolor")
    group = render_board(board, 80)
    assert isinstance(group, Group)
    row = group.renderables[1]
    green = sum(len(s.text) for s in console.render(row) if s.style and "green" in str(s.style))
    assert round(cells * 41 / 134) == green


def test_unpacking_while_downloading_shows_both_fetched_and_applied() -> None:
    board, _ = busy_pull()
    line = next(line for line in drawn(board, 120) if "bbbbbbbbbbbb" in line)
    assert "downloading" in line  # the unpacking phase begins with the last byte
    assert "fetched 20.0/40.0 MiB, applied 8.0/40.0 MiB" in line
    compact = next(line for line in drawn(board, 80) if "bbbbbbbbbbbb" in line)
    assert "20.0/40.0 MiB, applied 8.0 MiB" in compact
    stored = next(line for line in drawn(board, 120) if "777777777777" in line)
    assert "unpacking" in stored
    assert "applied 3.0/6.0 MiB" in stored
    pull = PullReporter(board, None)
    pull.blob_advanced(APPLYING, APPLYING.size)
    pull.blob_verifying(APPLYING)
    pull.blob_done(APPLYING, "done")
    line = next(line for line in drawn(board, 120) if "bbbbbbbbbbbb" in line)
    assert "unpacking" in line
    assert "applied 8.0/40.0 MiB" in line


def test_resumed_and_failed_rows_say_so() -> None:
    board, _ = busy_pull()
    lines = drawn(board, 200)
    assert "resumed at 3.0 MiB" in next(line for line in lines if "eeeeeeeeeeee" in line)
    assert "digest mismatch" in next(line for line in lines if "ffffffffffff" in line)


def test_total_line_has_bytes_rate_and_time_left() -> None:
    board, _ = busy_pull()
    total = drawn(board, 200)[-1]
    # 41 + 20 MiB moved in 10 s (the config's bytes too); cached and resumed bytes excluded.
    assert total.startswith("total ")
    assert "/s" in total
    assert "left" in total
    assert "elapsed 10 s" in total
    assert "6.1 MiB/s" in total


def test_retry_is_shown_and_then_the_resume_point() -> None:
    board, clock = busy_pull()
    pull = PullReporter(board, None)
    pull.blob_retrying(BIG, "503 Service Unavailable", 2.0)
    assert "retrying in 2.0 s: 503 Service Unavailable" in drawn(board, 200)[1]
    clock.now += 3
    pull.blob_advanced(BIG, 42 * MiB)
    assert "resumed at 41.0 MiB" in drawn(board, 200)[1]  # where it went on from
    pull.blob_retrying(QUEUED, "503 Service Unavailable", 1.0)  # before its first byte
    pull.blob_started(QUEUED, 0)
    pull.blob_advanced(QUEUED, 1 * MiB)
    queued = next(line for line in drawn(board, 200) if "dddddddddddd" in line)
    assert "resumed" not in queued
    assert "retrying" not in queued


def test_finished_leaves_a_clean_summary() -> None:
    board, _clock = busy_pull()
    pull = PullReporter(board, None)
    for blob in (BIG, APPLYING):
        pull.blob_advanced(blob, blob.size)
        pull.blob_done(blob, "done")
        pull.layer_unpacked(blob, "sha256:" + "1" * 64)
    pull.finished(174 * MiB, 12.0)
    lines = drawn(board, 80)
    assert lines[-1] == "pulled: 174.0 MiB in 12 s (14.5 MiB/s)"
    assert "unpacked" in next(line for line in lines if "aaaaaaaaaaaa" in line)


def test_live_view_draws_its_last_frame_on_exit() -> None:
    console = Console(record=True, width=100, file=io.StringIO(), force_terminal=True)
    board, _ = busy_pull()
    with LiveView(board, console):
        board.summary = "pulled: 1.0 MiB in 1.0 s (1.0 MiB/s)"
    assert "pulled: 1.0 MiB in 1.0 s" in console.export_text()


def test_plain_lines_and_periodic_byte_counts() -> None:
    clock, out = Clock(), io.StringIO()
    board = Board(clock)
    view = PlainView(board, out)
    pull = PullReporter(board, view)
    pull.blob_started(BIG, 0)
    clock.now += 2
    pull.blob_advanced(BIG, 10 * MiB)
    view.counts()  # 2 s: too early for a count
    clock.now += 4
    pull.blob_advanced(BIG, 30 * MiB)
    view.counts()
    view.counts()  # once per interval only
    pull.blob_retrying(BIG, "503 Service Unavailable", 2.0)
    lines = out.getvalue().splitlines()
    label = f"layer-{BIG.digest}"
    assert lines == [
        f"{label}: downloading 134.0 MiB",
        f"{label}: downloading 30.0/134.0 MiB",
        f"{label}: retrying in 2.0 s: 503 Service Unavailable",
    ]


def test_push_rows_show_uploaded_bytes() -> None:
    board = Board(Clock())
    push = PushReporter(board, None)
    push.blob_state(BIG, "waiting")
    push.blob_state(BIG, "uploading")
    push.blob_advanced(BIG, 16 * MiB)
    push.blob_state(CACHED, "exists")
    line = drawn(board, 120)
    assert "uploading" in line[0]
    assert "16.0/134.0 MiB" in line[0]
    assert "exists" in line[1]


def test_commit_rows_show_the_layer_being_written() -> None:
    board = Board(Clock())
    commit = CommitReporter(board, None)
    commit.scanned(12, 30 * MiB)
    written = ByteMeter()
    written.count = 10 * MiB
    commit.layer_writing(written, 31 * MiB)
    lines = drawn(board, 120)
    assert lines[0] == "12 changed paths, 30.0 MiB of file data"
    assert "writing" in lines[1]
    assert "10.0/31.0 MiB" in lines[1]
    commit.blob_done(BIG, "done")
    assert "done" in drawn(board, 120)[1]
    assert "new layer" not in "".join(drawn(board, 120))
