"""One chunk's compressed bytes back to verified file contents.

``decode_chunk`` is the only way fetched bytes become file data: it inflates from the
chunk's first gzip member / zstd frame, never producing more than ``inner + size`` bytes
(a member claiming gigabytes stops there), and the result must hash to the chunk's
``digest`` (``DigestMismatch`` otherwise: wrong bytes are never handed on).
"""

from __future__ import annotations

import hashlib
from typing import cast

import zstandard
from isal import isal_zlib

from fsnap.errors import DigestMismatch
from fsnap.lazy.toc import Chunk, Format, unzstd_prefix

_INFLATE_ERRORS = cast("tuple[type[Exception], ...]", (isal_zlib.error, zstandard.ZstdError))


def decode_chunk(fmt: Format, chunk: Chunk, data: bytes) -> bytes:
    """The ``chunk.size`` bytes of ``chunk`` from ``data``, the blob's ``[start, end)``."""
    if chunk.zeros:
        return _verified(chunk, bytes(chunk.size))
    want = chunk.inner + chunk.size
    try:
        plain = _gunzip_prefix(data, want) if fmt == "estargz" else unzstd_prefix(data, want)
    except _INFLATE_ERRORS as e:
        raise DigestMismatch(f"chunk at blob offset {chunk.start}: {e}") from None
    return checked(chunk, plain)


def checked(chunk: Chunk, plain: bytes) -> bytes:
    """``chunk``'s bytes from ``plain``, what its gzip member or zstd frame inflates to
    (``inner`` bytes of other chunks first), verified against its digest."""
    want = chunk.inner + chunk.size
    if len(plain) < want:
        raise DigestMismatch(
            f"chunk at blob offset {chunk.start}: {len(plain)} bytes, expected {want}"
        )
    return _verified(chunk, plain[chunk.inner : want])


def _verified(chunk: Chunk, out: bytes) -> bytes:
    actual = "sha256:" + hashlib.sha256(out).hexdigest()
    if actual != chunk.digest:
        raise DigestMismatch(
            f"chunk at blob offset {chunk.start} has digest {actual}, its TOC says {chunk.digest}"
        )
    return out


def _gunzip_prefix(data: bytes, limit: int) -> bytes:
    """Up to ``limit`` bytes from the gzip members at the start of ``data``."""
    parts: list[bytes] = []
    got = 0
    rest = data
    while got < limit and rest:
        inflater = isal_zlib.decompressobj(wbits=31)
        while got < limit:
            part = inflater.decompress(rest, limit - got)
            rest = inflater.unconsumed_tail
            parts.append(part)
            got += len(part)
            if inflater.eof or not part:
                break
        if not inflater.eof:
            break
        rest = inflater.unused_data
    return b"".join(parts)
