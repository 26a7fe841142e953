"""``SizeLimit``, what a layer may unpack to, apart from the code that enforces it
(``fsnap.unpack.blob``) so that the CLI and the pull process name it without importing
``tarfile`` and the decompressors (the pull's own process never applies a layer unless no
applier process can start)."""

from __future__ import annotations

from dataclasses import dataclass

from fsnap.limits import INFLATION_FLOOR, INFLATION_RATIO


@dataclass(frozen=True)
class SizeLimit:
    """What a layer may unpack to: the ratio rule, or a fixed cap (``--max-layer-size``)."""

    ratio: float = INFLATION_RATIO
    floor: int = INFLATION_FLOOR
    absolute: int | None = None

    def for_blob(self, compressed: int) -> int:
        if self.absolute is not None:
            return self.absolute
        return max(self.floor, int(self.ratio * compressed))
