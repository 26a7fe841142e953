"""What applying one layer gives: ``ApplyResult``, apart from the applier
(``fsnap.archive.apply``) so that the pull process, which only receives results from its
applier processes, imports neither ``tarfile`` nor the decompressors to name them."""

from __future__ import annotations

from dataclasses import dataclass

from fsnap.archive.entry import Entry


@dataclass
class ApplyResult:
    """``diff_id``: ``sha256:`` of all uncompressed bytes; ``size``: how many there were;
    ``allocated``: (bytes allocated, inodes) of the tree written, when its writer measured
    it (``fsnap.fdtree.allocated``: an applier process, so the commit need not walk it);
    ``stored``: each entry's ``Entry.to_bytes()``, the index's stored form, when its writer
    encoded them (an applier process, so the pull writes the index without encoding it)."""

    diff_id: str
    entries: list[Entry]
    size: int
    allocated: tuple[int, int] | None = None
    stored: list[bytes] | None = None
