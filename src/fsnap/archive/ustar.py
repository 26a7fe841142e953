"""``LeanTarInfo``: ``tarfile``'s header decoding with a fast path for the plain header.

Every member of an image layer written by Docker, BuildKit or Go's ``archive/tar`` has a
PAX header, so ``tarfile`` decodes two 512-byte headers per member, each with two
checksums over a 504-tuple (signed and unsigned), seven numbers and five strings through
small helper calls. Measured on the bench image's 49 MB layer (5,676 members, every one
with a PAX header), parsing the headers alone took 0.37 s with ``tarfile.TarInfo``, about a
third of the applier's main thread; ``frombuf`` was 70 % of that.

``LeanTarInfo`` decodes a header whose numbers are plain octal text and whose unsigned
checksum matches with one ``struct`` unpack, and hands *every other header* to
``tarfile``'s own decoder unchanged: base-256 numbers, signed checksums, GNU sparse
headers, empty, truncated or zero blocks, anything that does not parse. So what it
returns or raises is ``tarfile``'s for every input (``tests/test_archive_ustar.py``
compares the two on real and mutated headers); the rest of ``tarfile`` (PAX records, GNU
long names, sparse maps, offsets) is used as it is.

Two generations of ``tarfile`` exist: older ones (Debian 12's 3.11) read every header
through ``frombuf``; newer ones (CPython's 2025 tarfile fixes) through
``_frombuf(..., dircheck=)``, where ``dircheck=False`` (the header after a GNU long name
or a PAX header) skips the old V7 "name ending in / is a directory" rule. Both entry
points are overridden, each falling back to its own stock version.
"""

from __future__ import annotations

import struct
import tarfile
import zlib
from typing import Self

_BLOCK = tarfile.BLOCKSIZE
# name mode uid gid size mtime chksum type linkname magic+version uname gname devmajor
# devminor prefix (the POSIX ustar layout; the last 12 bytes are padding)
_USTAR = struct.Struct("100s8s8s8s12s12s8s1s100s8x32s32s8s8s155s")
_NUMBERS = (1, 2, 3, 4, 5, 6, 11, 12)  # mode uid gid size mtime chksum devmajor devminor
_TEXTS = (0, 8, 9, 10, 13)  # name linkname uname gname prefix


def _unsigned_checksum(buf: bytes | bytearray) -> int:
    """The sum of the header's bytes, its checksum field counted as 8 spaces (what
    ``tarfile.calc_chksums`` calls unsigned). Each half's sum is at most 256 * 255 = 65,280,
    below Adler-32's modulus 65,521, so the low half of ``adler32`` (1 + the sum of the
    bytes) is that sum exactly: 0.8 us per header instead of 3.4 us for ``sum``."""
    view = memoryview(buf)
    low = zlib.adler32(view[:256]) & 0xFFFF
    high = zlib.adler32(view[256:]) & 0xFFFF
    return low + high - 2 - sum(view[148:156]) + 256


_DIRCHECK = hasattr(tarfile.TarInfo, "_frombuf")  # the newer tarfile (module doc)


class LeanTarInfo(tarfile.TarInfo):
    """A ``tarfile.TarInfo`` whose header decoding is faster on plain headers (module doc)."""

    __slots__ = ()

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        return cls._decode(buf, encoding, errors, True)

    if _DIRCHECK:

        @classmethod
        def _frombuf(
            cls, buf: bytes | bytearray, encoding: str, errors: str, *, dircheck: bool = True
        ) -> Self:
            return cls._decode(buf, encoding, errors, dircheck)

    @classmethod
    def _stock(cls, buf: bytes | bytearray, encoding: str, errors: str, dircheck: bool) -> Self:
        """``tarfile``'s own decoding of ``buf``."""
        if _DIRCHECK:
            return super()._frombuf(buf, encoding, errors, dircheck=dircheck)  # type: ignore[misc, no-any-return]
        return super().frombuf(buf, encoding, errors)

    @classmethod
    def _decode(cls, buf: bytes | bytearray, encoding: str, errors: str, dircheck: bool) -> Self:
        if len(buf) != _BLOCK or buf[156:157] == tarfile.GNUTYPE_SPARSE:
            return cls._stock(buf, encoding, errors, dircheck)
        fields = _USTAR.unpack_from(buf)
        try:
            # Plain octal text, cut at its NUL, empty for 0. ``int`` on bytes refuses
            # anything ``tarfile.nti`` would read otherwise: base-256 numbers (not ASCII),
            # blank fields (``nti`` strips them to 0) and more, which go to ``tarfile``.
            numbers = [int(fields[i].partition(b"\0")[0] or b"0", 8) for i in _NUMBERS]
        except ValueError:
            return cls._stock(buf, encoding, errors, dircheck)
        if numbers[5] != _unsigned_checksum(buf):
            return cls._stock(buf, encoding, errors, dircheck)
        return cls._lean(fields, encoding, errors, numbers, dircheck)

    @classmethod
    def _lean(
        cls,
        fields: tuple[bytes, ...],
        encoding: str,
        errors: str,
        numbers: list[int],
        dircheck: bool,
    ) -> Self:
        """The TarInfo ``tarfile`` builds from a plain header."""
        name, linkname, uname, gname, prefix = (
            fields[i].partition(b"\0")[0].decode(encoding, errors) for i in _TEXTS
        )
        obj = cls()
        obj.mode, obj.uid, obj.gid, obj.size, obj.mtime, obj.chksum = numbers[:6]
        obj.devmajor, obj.devminor = numbers[6:]
        obj.type = fields[7]
        obj.linkname, obj.uname, obj.gname = linkname, uname, gname
        if dircheck and obj.type == tarfile.AREGTYPE and name.endswith("/"):
            obj.type = tarfile.DIRTYPE  # the old V7 form of a directory
        if obj.type == tarfile.DIRTYPE:
            name = name.rstrip("/")
        if prefix and obj.type not in tarfile.GNU_TYPES:
            name = prefix + "/" + name
        obj.name = name
        return obj
