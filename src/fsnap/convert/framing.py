"""Writing a tar as a sequence of independently decompressible pieces, recording where.

Both seekable formats lay a layer out the same way: the tar stream is compressed in pieces
(gzip members for eStargz, zstd frames for zstd:chunked) and every regular file's data
starts a new piece, cut again every ``chunk_size`` bytes, so that a reader can fetch and
inflate one chunk from its offset alone. Tar headers (and the padding after a file's data)
go into whatever piece is open. The concatenation stays one valid gzip / zstd stream of the
whole tar, so the layer pulls and unpacks anywhere as an ordinary one.

``Framed`` counts both sides: compressed offsets (where each piece starts) and the
uncompressed bytes with their sha256 (the layer's diff_id).
"""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from fsnap.convert.source import Member
from fsnap.errors import InvalidArgument

DEFAULT_CHUNK_SIZE = 4 << 20  # eStargz's default (ctr-remote --estargz-chunk-size)
END_OF_ARCHIVE = b"\0" * (2 * tarfile.BLOCKSIZE)
_READ = 1 << 20


class Compressor(Protocol):
    """What ``zlib``-style compressors (isal_zlib, zstandard's compressobj) offer."""

    def compress(self, data: bytes, /) -> bytes: ...

    def flush(self) -> bytes: ...


class Framed:
    """Uncompressed tar bytes in; compressed pieces out to ``out``, one per ``cut``."""

    def __init__(self, out: BinaryIO, new_piece: Callable[[], Compressor]) -> None:
        self._out = out
        self._new_piece = new_piece
        self._piece: Compressor | None = None
        self._hash = hashlib.sha256()
        self.offset = 0  # compressed bytes written so far
        self.size = 0  # uncompressed bytes written so far

    def write(self, data: bytes) -> None:
        """Add tar bytes to the open piece (opening one if none is)."""
        if self._piece is None:
            self._piece = self._new_piece()
        self._hash.update(data)
        self.size += len(data)
        self._emit(self._piece.compress(data))

    def cut(self) -> int:
        """End the open piece (if any); the offset where the next one will start."""
        if self._piece is not None:
            self._emit(self._piece.flush())
            self._piece = None
        return self.offset

    def raw(self, data: bytes) -> None:
        """Bytes outside every piece (a footer, a skippable frame): not part of the tar."""
        self.cut()
        self._emit(data)

    def diff_id(self) -> str:
        return "sha256:" + self._hash.hexdigest()

    def _emit(self, data: bytes) -> None:
        if data:
            self._out.write(data)
            self.offset += len(data)


@dataclass(frozen=True)
class SeekableLayer:
    """What a format writer made of a layer (the blob itself went to its ``out``): the
    uncompressed stream's sha256 and size, the TOC's digest, the descriptor annotations."""

    diff_id: str
    uncompressed_size: int
    toc_digest: str
    annotations: dict[str, str]


@dataclass(frozen=True)
class Chunk:
    """One piece of a file's data: where its piece starts and ends in the blob (-1: it
    goes on with what follows), where it starts in the file, how long it is, and the
    sha256 of its bytes."""

    offset: int
    end: int
    file_offset: int
    size: int
    digest: str


@dataclass(frozen=True)
class Written:
    """A member as written: its header, its chunks (regular files with data) and the
    sha256 of all its data (regular files, also empty ones)."""

    info: tarfile.TarInfo
    chunks: tuple[Chunk, ...]
    digest: str


def header_bytes(info: tarfile.TarInfo) -> bytes:
    """The member's tar header (PAX where a field needs it), as ``fsnap.diff.tar`` writes."""
    try:
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    except ValueError as e:
        raise InvalidArgument(f"{info.name!r}: cannot be written as a tar header: {e}") from None


def tar_name(info: tarfile.TarInfo) -> str:
    """The name as the header carries it (directories end with ``/``, as tarfile writes)."""
    if info.isdir() and not info.name.endswith("/"):
        return info.name + "/"
    return info.name


def write_members(
    framed: Framed, members: Iterable[Member], chunk_size: int, *, cut_after_data: bool
) -> list[Written]:
    """Write every member; each regular file's data starts a piece, and so does every
    ``chunk_size`` bytes of it. ``cut_after_data`` ends the piece after the last chunk too
    (zstd:chunked), else the padding and the next headers share it (eStargz)."""
    written: list[Written] = []
    for member in members:
        framed.write(header_bytes(member.info))
        whole = hashlib.sha256()
        chunks: tuple[Chunk, ...] = ()
        if member.data is not None and member.info.size:
            chunks = _write_data(framed, member, chunk_size, whole, cut_after_data)
            framed.write(b"\0" * (-member.info.size % tarfile.BLOCKSIZE))
        written.append(Written(member.info, chunks, "sha256:" + whole.hexdigest()))
    return written


def _write_data(
    framed: Framed, member: Member, chunk_size: int, whole: hashlib._Hash, cut_after: bool
) -> tuple[Chunk, ...]:
    assert member.data is not None
    size = member.info.size
    chunks: list[Chunk] = []
    done = 0
    while done < size:
        start = framed.cut()
        length = min(chunk_size, size - done)
        digest = _copy(framed, member, length, whole)
        end = framed.cut() if cut_after else -1  # -1: the piece goes on (padding, headers)
        chunks.append(Chunk(start, end, done, length, digest))
        done += length
    return tuple(chunks)


def _copy(framed: Framed, member: Member, length: int, whole: hashlib._Hash) -> str:
    assert member.data is not None
    piece = hashlib.sha256()
    left = length
    while left:
        data = member.data.read(min(_READ, left))
        if not data:
            raise InvalidArgument(f"{member.info.name!r}: the layer's data ends early")
        piece.update(data)
        whole.update(data)
        framed.write(data)
        left -= len(data)
    return "sha256:" + piece.hexdigest()
