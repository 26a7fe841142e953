"""How much of each lazy layer is here, for ``fsnap images`` and ``fsnap mounts``.

Without lazy snapshots (the usual case) nothing of ``fsnap.lazy`` is imported: the listing
commands stay light."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fsnap.errors import FsnapError
from fsnap.labels import LAZY_LABEL
from fsnap.progress import human_size

if TYPE_CHECKING:
    from fsnap.client import Client


def any_lazy(client: Client) -> bool:
    return any(LAZY_LABEL in info.labels for info in client.snapshots.walk())


def lazy_presence(client: Client, top: str) -> list[tuple[str, int, int]]:
    """(layer, bytes present, bytes of file data in all) of each lazy layer in ``top``'s
    chain; none if ``top`` is gone."""
    from fsnap.lazy.state import lazy_layers

    try:
        return lazy_layers(client.snapshots, client.db, top)
    except FsnapError:
        return []


def presence_line(owner: str, layer: str, have: int, total: int) -> str:
    return f"{owner}: lazy layer {layer[:19]}: {human_size(have)} of {human_size(total)} present"
