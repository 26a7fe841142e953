"""The uncompressed tar byte stream as the applier consumes it: hashed, counted, one pass.

``tarfile``'s own stream mode (``r|``) copies every byte through a small internal buffer,
which costs more than the rest of the applier on a large layer. ``LayerStream`` instead
offers ``tarfile`` what its ordinary mode needs (``read``, ``tell`` and ``seek``) while only
ever moving forward: a forward seek reads the skipped bytes (tar padding), a backward one is
a bug and raises.

Reading and hashing happen in a thread of their own (``_ReadAhead``), not in the thread
that parses the tar and creates files: reading the source is what inflates the blob, and
both inflating (ISA-L, zstandard) and sha256 release the GIL on large buffers, so on two
cores the decompress+hash stage and the parse+write stage run side by side. The two are
joined by a bounded queue of 1 MiB chunks (memory stays flat: a fast reader waits for the
applier), the thread is joined when the stream is closed, and an error of the reading
thread is raised by the next ``read`` of the applier.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import BinaryIO

from fsnap.errors import InvalidArgument

_CHUNK = 1 << 20  # bytes the reading thread asks the source for at a time
_DEPTH = 8  # chunks queued ahead of the applier at most
_SKIP = 1 << 20
# What may follow a tar's end-of-archive blocks: padding to the writer's record size (Go's
# archive/tar, which docker, BuildKit and containerd use: none; GNU tar: 10 KiB records by
# default). The bytes are hashed (they are part of the diff_id) but describe nothing, and
# they count towards no size limit: 9 MB of gzip inflating to 2 GiB of zeros after a small
# archive took 9.8 s of CPU to import. Past this, the layer is refused.
MAX_TRAILING = 64 << 20


class _ReadAhead:
    """A thread reading ``source`` to its end in chunks, hashing (sha256) every byte.

    ``stop`` (from the consumer) makes the thread quit at its next chunk; ``interrupt`` is
    called then too, to wake a thread blocked in ``source.read`` on bytes that will never be
    needed (e.g. ``BytePipe.detach``)."""

    def __init__(self, source: BinaryIO, interrupt: Callable[[], None] | None) -> None:
        self._source = source
        self._interrupt = interrupt
        self._hash = hashlib.sha256()
        self._cond = threading.Condition()
        self._chunks: deque[bytes] = deque()
        self._eof = False
        self._error: BaseException | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="fsnap-layer-read", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                data = self._source.read(_CHUNK)
                if not data:
                    break
                self._hash.update(data)  # GIL released for large buffers
                with self._cond:
                    while len(self._chunks) >= _DEPTH and not self._stopped:
                        self._cond.wait()
                    if self._stopped:
                        return
                    self._chunks.append(data)
                    self._cond.notify_all()
        except BaseException as exc:  # handed to the consumer, raised by its next read
            with self._cond:
                self._error = exc
                self._cond.notify_all()
            return
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def next_chunk(self) -> bytes:
        """The next chunk in order, ``b""`` at the end; the reading thread's error if any."""
        with self._cond:
            while not self._chunks and not self._eof and self._error is None:
                self._cond.wait()
            if self._chunks:
                data = self._chunks.popleft()
                self._cond.notify_all()
                return data
            if self._error is not None:
                raise self._error
            return b""

    def hexdigest(self) -> str:
        """The sha256 of everything read; only final once ``next_chunk`` returned ``b""``."""
        return self._hash.hexdigest()

    def stop(self) -> None:
        """Make the thread quit (early, if it has not reached the end) and wait for it."""
        with self._cond:
            self._stopped = True
            self._chunks.clear()
            self._cond.notify_all()
            finished = self._eof or self._error is not None
        if not finished and self._interrupt is not None:
            self._interrupt()
        self._thread.join()


class LayerStream:
    """Forward-only view of ``raw`` that hashes (sha256) and counts every byte read.

    ``raw`` is read ahead by a thread of its own from the first ``read`` on; ``close`` (or
    leaving a ``with`` block) stops and joins it, calling ``interrupt`` first if the
    thread may be blocked in ``raw.read``."""

    def __init__(self, raw: BinaryIO, *, interrupt: Callable[[], None] | None = None) -> None:
        self._raw = raw
        self._interrupt = interrupt
        self._ahead: _ReadAhead | None = None
        self._chunk = memoryview(b"")
        self._at_end = False
        self.size = 0

    def __enter__(self) -> LayerStream:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.stop()

    def read(self, n: int = -1) -> bytes:
        """``n`` bytes, fewer only at the end (``b""`` then). Never a short read before
        the end: ``tarfile`` (which reads headers straight from us) takes a short header
        read for a damaged header, and after the first member it then *ends the archive
        quietly*: a PAX header straddling two chunks dropped every later member."""
        if n < 0:
            return self._read_all()
        if len(self._chunk) >= n:  # the common case: one slice of the current chunk
            data = self._chunk[:n]
            self._chunk = self._chunk[n:]
            self.size += n
            return data.tobytes()
        out = bytearray()
        while len(out) < n and (self._chunk or self._refill()):
            take = self._chunk[: n - len(out)]
            out += take
            self._chunk = self._chunk[len(take) :]
        self.size += len(out)
        return bytes(out)

    def read1(self, n: int) -> bytes:
        """Up to ``n`` bytes, at most what one queued chunk holds (no copying chunks
        together): for file contents, which are written out as they come."""
        if not self._chunk and not self._refill():
            return b""
        data = self._chunk[:n]
        self._chunk = self._chunk[len(data) :]
        self.size += len(data)
        return data.tobytes()

    def _read_all(self) -> bytes:
        out = bytearray()
        while self._chunk or self._refill():
            out += self._chunk
            self.size += len(self._chunk)
            self._chunk = memoryview(b"")
        return bytes(out)

    def _refill(self) -> bool:
        if self._at_end:
            return False
        if self._ahead is None:
            self._ahead = _ReadAhead(self._raw, self._interrupt)
        data = self._ahead.next_chunk()
        if not data:
            self._at_end = True
            return False
        self._chunk = memoryview(data)
        return True

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

    def drain(self, limit: int = MAX_TRAILING) -> None:
        """Hash what follows the end of the archive too: it is part of the diff_id.
        ``InvalidArgument`` past ``limit`` bytes of it."""
        start = self.size
        while self.read(_SKIP):
            if self.size - start > limit:
                raise InvalidArgument(
                    f"invalid archive: over {limit} bytes follow its end-of-archive blocks"
                )

    def digest(self) -> str:
        """``sha256:`` of every byte of ``raw``; call it after ``drain``."""
        if not self._at_end:
            raise io.UnsupportedOperation("the layer stream was not read to its end")
        assert self._ahead is not None
        return "sha256:" + self._ahead.hexdigest()
