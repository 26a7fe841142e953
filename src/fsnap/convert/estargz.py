"""eStargz (stargz-snapshotter ``docs/estargz.md``): a gzip layer whose files can be fetched
one by one.

Layout: the members' tar stream in gzip members (a new member at the start of each regular
file's data and every ``chunk_size`` bytes of it); then a gzip member holding the tar entry
``stargz.index.json`` (the TOC) and the tar's end-of-archive blocks; then the 51-byte
footer, an empty gzip member whose extra field ``SG`` holds ``%016x`` of the TOC member's
offset followed by ``STARGZ``. The TOC lists every entry and each chunk (``reg`` for the
first, ``chunk`` after it) with the offset of the gzip member it starts, its offset and
size in the file (``chunkSize`` 0 for the last or only chunk) and its sha256
(``chunkDigest``); ``digest`` is the whole file's. The descriptor's annotations pin the TOC
(``containerd.io/snapshot/stargz/toc.digest``, the sha256 of its JSON) and give the
uncompressed size (``io.containers.estargz.uncompressed-size``).

gzip members come from ISA-L (``isal_zlib``, level 2: about zlib 6's ratio at several times
its speed; it releases the GIL).
"""

from __future__ import annotations

import hashlib
import struct
import tarfile
from collections.abc import Iterable
from typing import Any, BinaryIO

from isal import isal_zlib

from fsnap.convert.framing import (
    END_OF_ARCHIVE,
    Framed,
    SeekableLayer,
    Written,
    header_bytes,
    tar_name,
    write_members,
)
from fsnap.convert.source import Member
from fsnap.convert.toc import common_fields, encode, rfc3339

TOC_NAME = "stargz.index.json"
TOC_DIGEST_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"
UNCOMPRESSED_SIZE_ANNOTATION = "io.containers.estargz.uncompressed-size"
FOOTER_SIZE = 51
LEVEL = 2


def footer(toc_offset: int) -> bytes:
    """The 51-byte eStargz footer pointing at the TOC member at ``toc_offset``."""
    subfield = b"%016xSTARGZ" % toc_offset
    extra = b"SG" + struct.pack("<H", len(subfield)) + subfield
    header = b"\x1f\x8b\x08\x04" + b"\0\0\0\0" + b"\x00\xff" + struct.pack("<H", len(extra))
    empty_stored_block = b"\x01\x00\x00\xff\xff"
    return header + extra + empty_stored_block + b"\0" * 8  # CRC32 and ISIZE of nothing


def write_estargz(members: Iterable[Member], out: BinaryIO, chunk_size: int) -> SeekableLayer:
    """Write ``members`` as an eStargz blob to ``out``."""
    framed = Framed(out, lambda: isal_zlib.compressobj(LEVEL, isal_zlib.DEFLATED, 31))
    written = write_members(framed, members, chunk_size, cut_after_data=False)
    toc = encode({"version": 1, "entries": [e for w in written for e in _entries(w)]})
    toc_offset = framed.cut()
    info = tarfile.TarInfo(TOC_NAME)
    info.size, info.mode, info.uname, info.gname = len(toc), 0o644, "", ""
    framed.write(header_bytes(info) + toc + b"\0" * (-len(toc) % tarfile.BLOCKSIZE))
    framed.write(END_OF_ARCHIVE)
    framed.raw(footer(toc_offset))
    toc_digest = "sha256:" + hashlib.sha256(toc).hexdigest()
    annotations = {
        TOC_DIGEST_ANNOTATION: toc_digest,
        UNCOMPRESSED_SIZE_ANNOTATION: str(framed.size),
    }
    return SeekableLayer(framed.diff_id(), framed.size, toc_digest, annotations)


def _entries(w: Written) -> list[dict[str, Any]]:
    """The TOC entries of one member: one, or one per chunk of a regular file."""
    info = w.info
    name = tar_name(info)
    entry = common_fields(info, name)
    if info.uname:
        entry["userName"] = info.uname
    if info.gname:
        entry["groupName"] = info.gname
    entry["modtime"] = rfc3339(info)
    if not info.isreg():
        return [entry]
    if info.size:
        entry["size"] = info.size
    entry["digest"] = w.digest
    entries = [entry]
    for i, chunk in enumerate(w.chunks):
        this: dict[str, Any] = entry if i == 0 else {"name": name, "type": "chunk"}
        this["offset"] = chunk.offset
        if chunk.file_offset:
            this["chunkOffset"] = chunk.file_offset
        if i + 1 < len(w.chunks):
            this["chunkSize"] = chunk.size
        this["chunkDigest"] = chunk.digest
        if i:
            entries.append(this)
    return entries
