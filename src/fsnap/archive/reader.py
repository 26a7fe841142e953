"""The uncompressed tar byte stream as the applier consumes it: hashed, counted, one pass.

``tarfile``'s own stream mode (``r|``) copies every byte through a small internal buffer,
which costs more than the rest of the applier on a large layer. ``LayerStream`` instead
offers ``tarfile`` what its ordinary mode needs (``read``, ``tell`` and ``seek``) while only
ever moving forward: a forward seek reads and hashes the skipped bytes (tar padding), a
backward one is a bug and raises. File contents are read straight from the underlying
stream into the destination file, with nothing copied in between.
"""

from __future__ import annotations

import hashlib
import io
from typing import BinaryIO

_SKIP = 1 << 20


class LayerStream:
    """Forward-only view of ``raw`` that hashes (sha256) and counts every byte read."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._hash.update(data)
        self.size += len(data)
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self.size

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self.size
        if whence == io.SEEK_END or offset < self.size:
            raise io.UnsupportedOperation("a layer stream only moves forward")
        while self.size < offset and self.read(min(offset - self.size, _SKIP)):
            pass
        return self.size

    def drain(self) -> None:
        """Hash what follows the end of the archive too: it is part of the diff_id."""
        while self.read(_SKIP):
            pass

    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()
