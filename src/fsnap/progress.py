"""Pull progress: the observer the pipeline calls, and two renderers for the CLI.

The library never prints. ``fsnap.pull`` reports every state change of every blob to a
``PullProgress`` (whose methods all do nothing); the CLI picks ``LiveProgress`` on a
terminal (a ``rich`` table refreshed in place, like ``ctr pull``) or ``PlainProgress``
otherwise (one line per state change, fit for logs). Observer methods run on the trio loop
and must return quickly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import IO, Literal

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from fsnap import oci
from fsnap.oci import Descriptor

BlobState = Literal["waiting", "downloading", "done", "exists", "unpacking", "unpacked"]


class PullProgress:
    """What a pull reports. Subclass and override what you need; every default is a no-op."""

    def resolving(self, ref: str) -> None:
        """Resolution of ``ref`` on its registry has begun."""

    def resolved(self, ref: str, desc: Descriptor) -> None:
        """``ref`` names ``desc``."""

    def blob_waiting(self, desc: Descriptor) -> None:
        """The blob is known and queued (for a download slot, or for another writer)."""

    def blob_started(self, desc: Descriptor, offset: int) -> None:
        """Downloading began at ``offset`` (non-zero when an earlier ingest resumes)."""

    def blob_advanced(self, desc: Descriptor, offset: int) -> None:
        """``offset`` bytes of the blob are written."""

    def blob_done(self, desc: Descriptor, state: Literal["done", "exists"]) -> None:
        """The blob is committed: fetched now (``done``) or found in the store (``exists``)."""

    def layer_unpacking(self, desc: Descriptor) -> None:
        """The layer is being applied (while it downloads, or from the store)."""

    def layer_unpacked(self, desc: Descriptor, chain_id: str) -> None:
        """The layer is committed as snapshot ``chain_id``."""

    def finished(self, downloaded: int, elapsed: float) -> None:
        """The pull succeeded; ``downloaded`` bytes came over the network in ``elapsed`` s."""


def blob_label(desc: Descriptor) -> str:
    """``layer-sha256:…`` etc., as ``ctr pull`` names its lines."""
    if desc.media_type in oci.INDEX_TYPES:
        kind = "index"
    elif desc.media_type in oci.MANIFEST_TYPES:
        kind = "manifest"
    elif desc.media_type in oci.CONFIG_TYPES:
        kind = "config"
    elif desc.media_type in oci.LAYER_TYPES:
        kind = "layer"
    else:
        kind = "blob"
    return f"{kind}-{desc.digest}"


def human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    raise AssertionError("unreachable")


def summary_line(downloaded: int, elapsed: float) -> str:
    speed = downloaded / elapsed if elapsed > 0 else 0.0
    return f"elapsed: {elapsed:.1f} s\ttotal: {human_size(downloaded)} ({human_size(speed)}/s)"


class PlainProgress(PullProgress):
    """One line per state change: for pipes, logs and CI output."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def _say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def resolving(self, ref: str) -> None:
        self._say(f"{ref}: resolving")

    def resolved(self, ref: str, desc: Descriptor) -> None:
        self._say(f"{ref}: resolved {desc.digest}")

    def blob_started(self, desc: Descriptor, offset: int) -> None:
        resumed = f" (resuming at {human_size(offset)})" if offset else ""
        self._say(f"{blob_label(desc)}: downloading {human_size(desc.size)}{resumed}")

    def blob_done(self, desc: Descriptor, state: Literal["done", "exists"]) -> None:
        self._say(f"{blob_label(desc)}: {state}")

    def layer_unpacking(self, desc: Descriptor) -> None:
        self._say(f"{blob_label(desc)}: unpacking")

    def layer_unpacked(self, desc: Descriptor, chain_id: str) -> None:
        self._say(f"{blob_label(desc)}: unpacked {chain_id}")

    def finished(self, downloaded: int, elapsed: float) -> None:
        self._say(summary_line(downloaded, elapsed))


@dataclass
class _Row:
    desc: Descriptor
    state: BlobState = "waiting"
    offset: int = 0


class LiveProgress(PullProgress):
    """A live table, a line per blob, redrawn in place on a terminal (use as a context)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=False)
        self.ref = ""
        self.ref_state = "resolving"
        self.rows: dict[str, _Row] = {}
        self.started = time.monotonic()
        self.summary = ""
        self._live = Live(
            console=self.console, get_renderable=self.render, refresh_per_second=8, transient=False
        )

    def __enter__(self) -> LiveProgress:
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.stop()

    def render(self) -> RenderableType:
        # Fixed widths for state, bar and sizes; the blob name gives way on narrow terminals.
        table = Table.grid(padding=(0, 1))
        name_width = max(16, self.console.width - 11 - 24 - 21 - 4)
        table.add_column(no_wrap=True, overflow="ellipsis", max_width=name_width)
        table.add_column(no_wrap=True, width=11)
        table.add_column(width=24)
        table.add_column(no_wrap=True, width=21)
        table.add_row(f"{self.ref}:", self.ref_state, ProgressBar(total=1, completed=1), "")
        for row in self.rows.values():
            total = max(row.desc.size, 1)
            complete = row.offset if row.state in ("waiting", "downloading") else row.desc.size
            sizes = f"{human_size(complete)}/{human_size(row.desc.size)}"
            table.add_row(
                blob_label(row.desc) + ":",
                row.state,
                ProgressBar(total=total, completed=complete),
                sizes if row.state == "downloading" else "",
            )
        elapsed = time.monotonic() - self.started
        footer = self.summary or f"elapsed: {elapsed:.1f} s"
        return Group(table, Text(footer))

    def resolving(self, ref: str) -> None:
        self.ref, self.ref_state = ref, "resolving"

    def resolved(self, ref: str, desc: Descriptor) -> None:
        self.ref_state = "resolved"

    def blob_waiting(self, desc: Descriptor) -> None:
        self.rows.setdefault(desc.digest, _Row(desc))

    def blob_started(self, desc: Descriptor, offset: int) -> None:
        row = self.rows.setdefault(desc.digest, _Row(desc))
        row.state, row.offset = "downloading", offset

    def blob_advanced(self, desc: Descriptor, offset: int) -> None:
        self.rows.setdefault(desc.digest, _Row(desc)).offset = offset

    def blob_done(self, desc: Descriptor, state: Literal["done", "exists"]) -> None:
        row = self.rows.setdefault(desc.digest, _Row(desc))
        if row.state != "unpacking":  # fetched, but still being unpacked: say so
            row.state = state

    def layer_unpacking(self, desc: Descriptor) -> None:
        self.rows.setdefault(desc.digest, _Row(desc)).state = "unpacking"

    def layer_unpacked(self, desc: Descriptor, chain_id: str) -> None:
        self.rows.setdefault(desc.digest, _Row(desc)).state = "unpacked"

    def finished(self, downloaded: int, elapsed: float) -> None:
        self.summary = summary_line(downloaded, elapsed)
        self._live.refresh()
