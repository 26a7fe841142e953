"""zstd:chunked (containers/storage ``pkg/chunked``): a zstd layer whose files can be
fetched one by one.

Layout: the tar stream in zstd frames (a new frame at the start of each regular file's
data and every ``chunk_size`` bytes of it, and after its last byte, so a chunk's frame holds
its data alone); then a skippable frame (magic ``0x184D2A50``) holding the zstd-compressed
TOC (the "manifest"); then a skippable frame of 64 bytes, the footer: little-endian uint64s
of the manifest's offset, compressed and uncompressed length, type (1, CRFS), three zeros
for the tar-split data this writer does not produce, and the magic ``GNUlInUx``. Skippable
frames are ignored by every zstd decoder, so the blob still inflates to the tar alone.

The TOC's entries: ``reg`` with ``digest`` (of the whole file), ``offset`` (its first
frame) and ``endOffset`` (the end of its last frame); a file of several chunks has
``chunkSize``/``chunkDigest`` on the ``reg`` entry too and one ``chunk`` entry per further
chunk (``offset``, ``chunkOffset``, ``chunkSize``, ``chunkDigest``). The descriptor's
annotations locate and pin it: ``...manifest-position`` is
``offset:compressed length:uncompressed length:1`` and ``...manifest-checksum`` the sha256
of the compressed manifest (the digest that verifies the TOC). Without tar-split data,
containers/storage pulls such a layer in full rather than partially; fsnap and containerd
read it as any zstd layer.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from typing import Any, BinaryIO

import zstandard

from fsnap.convert.framing import (
    END_OF_ARCHIVE,
    Framed,
    SeekableLayer,
    Written,
    tar_name,
    write_members,
)
from fsnap.convert.source import Member
from fsnap.convert.toc import common_fields, encode, rfc3339

CHECKSUM_ANNOTATION = "io.github.containers.zstd-chunked.manifest-checksum"
POSITION_ANNOTATION = "io.github.containers.zstd-chunked.manifest-position"
SKIPPABLE_MAGIC = struct.pack("<I", 0x184D2A50)
FOOTER_MAGIC = b"GNUlInUx"
MANIFEST_TYPE_CRFS = 1
LEVEL = 3


def skippable_frame(data: bytes) -> bytes:
    return SKIPPABLE_MAGIC + struct.pack("<I", len(data)) + data


def footer(offset: int, compressed: int, uncompressed: int) -> bytes:
    """The footer frame's 64 bytes of content (module docstring)."""
    fields = struct.pack("<7Q", offset, compressed, uncompressed, MANIFEST_TYPE_CRFS, 0, 0, 0)
    return fields + FOOTER_MAGIC


def write_zstd_chunked(members: Iterable[Member], out: BinaryIO, chunk_size: int) -> SeekableLayer:
    """Write ``members`` as a zstd:chunked blob to ``out``."""
    cctx = zstandard.ZstdCompressor(level=LEVEL)
    framed = Framed(out, cctx.compressobj)
    written = write_members(framed, members, chunk_size, cut_after_data=True)
    framed.write(END_OF_ARCHIVE)
    offset = framed.cut() + 8  # past the skippable frame's magic and length
    # (cut first: the open frame's compressobj shares cctx, which compress() resets)
    manifest = encode({"version": 1, "entries": [e for w in written for e in _entries(w)]})
    compressed = cctx.compress(manifest)
    framed.raw(skippable_frame(compressed))
    framed.raw(skippable_frame(footer(offset, len(compressed), len(manifest))))
    checksum = "sha256:" + hashlib.sha256(compressed).hexdigest()
    annotations = {
        CHECKSUM_ANNOTATION: checksum,
        POSITION_ANNOTATION: f"{offset}:{len(compressed)}:{len(manifest)}:{MANIFEST_TYPE_CRFS}",
    }
    return SeekableLayer(framed.diff_id(), framed.size, checksum, annotations)


def _entries(w: Written) -> list[dict[str, Any]]:
    info = w.info
    name = tar_name(info)
    entry = common_fields(info, name)
    entry["modtime"] = rfc3339(info)
    for record, key in (("atime", "accesstime"), ("ctime", "changetime")):
        if (stamp := rfc3339(info, record)) is not None:
            entry[key] = stamp
    if not info.isreg() or not w.chunks:
        if info.isreg() and info.size:
            entry["size"] = info.size
        return [entry]
    entry["size"] = info.size
    entry["digest"] = w.digest
    entry["offset"], entry["endOffset"] = w.chunks[0].offset, w.chunks[-1].end
    if len(w.chunks) == 1:
        return [entry]
    entries = [entry]
    for i, chunk in enumerate(w.chunks):
        this = entry if i == 0 else {"type": "chunk", "name": name, "offset": chunk.offset}
        if chunk.file_offset:
            this["chunkOffset"] = chunk.file_offset
        this["chunkSize"] = chunk.size
        this["chunkDigest"] = chunk.digest
        if i:
            entries.append(this)
    return entries
