"""``LeanTarInfo.frombuf`` decodes every header as ``tarfile.TarInfo.frombuf`` does.

The lean path is hostile-input code: these tests feed both decoders the headers of real
archives (ustar, GNU and PAX, with the odd forms: prefix-split names, V7 directories,
base-256 numbers, devices, sparse files) and tens of thousands of mutations of them, some
with the checksum fixed up so that the mutation reaches the fields, and require the same
TarInfo or the same error for each."""

from __future__ import annotations

import io
import random
import tarfile
from typing import Any

import pytest

from fsnap.archive import ustar
from fsnap.archive.ustar import LeanTarInfo

pytestmark = pytest.mark.timeout(120)

FIELDS = [slot for slot in tarfile.TarInfo.__slots__ if slot != "tarfile"]
BLOCK = tarfile.BLOCKSIZE


def _members() -> list[tarfile.TarInfo]:
    out = []
    members: list[tuple[str, bytes, dict[str, Any]]] = [
        ("etc/passwd", tarfile.REGTYPE, {"size": 5, "mode": 0o644}),
        ("usr/share/doc/" + "long-" * 25 + "/copyright", tarfile.REGTYPE, {"size": 1}),
        ("usr/bin/", tarfile.DIRTYPE, {"mode": 0o755}),
        ("usr/bin/python3", tarfile.SYMTYPE, {"linkname": "python3.11"}),
        ("usr/bin/hard", tarfile.LNKTYPE, {"linkname": "usr/bin/python3"}),
        ("dev/null", tarfile.CHRTYPE, {"devmajor": 1, "devminor": 3}),
        ("dev/sda", tarfile.BLKTYPE, {"devmajor": 8, "devminor": 0}),
        ("run/fifo", tarfile.FIFOTYPE, {}),
        ("home/big", tarfile.REGTYPE, {"uid": 3_000_000, "gid": 70_000, "size": 0}),
        ("old/v7dir/", tarfile.AREGTYPE, {}),
        ("cont", tarfile.CONTTYPE, {"mtime": 1_700_000_000}),
        ("ünïcode/ñame", tarfile.REGTYPE, {"uname": "üser", "gname": "grüp"}),
    ]
    for name, kind, extra in members:
        info = tarfile.TarInfo(name)
        info.type = kind
        for key, value in extra.items():
            setattr(info, key, value)
        out.append(info)
    return out


def _archives() -> list[bytes]:
    """Archives in each format; GNU's may carry base-256 numbers, PAX every member's
    header (what image layers have)."""
    found = []
    for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8") as tar:
            for info in _members():
                if fmt == tarfile.USTAR_FORMAT and (info.uid > 0o7777777 or len(info.name) > 150):
                    continue
                data = io.BytesIO(b"x" * info.size) if info.isreg() else None
                tar.addfile(info, data)
            if fmt == tarfile.GNU_FORMAT:
                huge = tarfile.TarInfo("huge-mtime")
                huge.mtime = 8**12  # past 11 octal digits: base-256
                tar.addfile(huge)
        found.append(buf.getvalue())
    return found


def _headers() -> list[bytes]:
    """Every 512-byte block of the archives that tarfile reads as a header."""
    blocks = [block for data in _archives() for block in _header_blocks(data)]
    blocks.append(_sparse_header())
    return blocks


def _header_blocks(data: bytes) -> list[bytes]:
    """The header blocks of one archive, PAX and GNU long-name headers included."""
    blocks = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        offsets = [m.offset for m in tar.getmembers()]
    for offset in offsets:  # a member's offset is that of its first (PAX, GNU) header
        while offset < len(data):
            block = data[offset : offset + BLOCK]
            blocks.append(block)
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            if info.type not in (*tarfile.GNU_TYPES, tarfile.XHDTYPE, tarfile.XGLTYPE):
                break
            offset += BLOCK + info._block(info.size)  # type: ignore[attr-defined]
    return blocks


def _sparse_header() -> bytes:
    """An old GNU sparse header (type S), written by hand (tarfile cannot write one)."""
    info = tarfile.TarInfo("sparse")
    info.type = tarfile.GNUTYPE_SPARSE
    info.size = 512
    block = bytearray(info.tobuf(tarfile.GNU_FORMAT)[:BLOCK])
    block[386:398] = b"%011o\0" % 0
    block[398:410] = b"%011o\0" % 512
    block[483:495] = b"%011o\0" % 4096
    return _with_checksum(bytes(block))


def _with_checksum(block: bytes) -> bytes:
    fixed = bytearray(block)
    fixed[148:156] = b" " * 8
    fixed[148:156] = b"%06o\0 " % (sum(fixed) & 0o777777)
    return bytes(fixed)


def _decode(cls: type[tarfile.TarInfo], block: bytes, dircheck: bool = True) -> tuple[Any, ...]:
    try:
        if dircheck:
            info = cls.frombuf(block, "utf-8", "surrogateescape")
        else:  # the newer tarfile's entry point for the header after a long name
            info = cls._frombuf(block, "utf-8", "surrogateescape", dircheck=False)  # type: ignore[attr-defined]
    except Exception as e:  # noqa: BLE001 - the outcome compared is the error itself
        return ("error", type(e), str(e))
    return tuple(getattr(info, name, None) for name in FIELDS)


def _same(block: bytes) -> None:
    """Both decoders agree, through every entry point this Python's tarfile has."""
    for dircheck in (True, False) if ustar._DIRCHECK else (True,):
        assert _decode(LeanTarInfo, block, dircheck) == _decode(tarfile.TarInfo, block, dircheck)


def test_real_headers_decode_alike() -> None:
    headers = _headers()
    assert len(headers) > 40
    for block in headers:
        _same(block)


def test_edge_blocks_decode_alike() -> None:
    plain = _headers()[0]
    for block in (
        b"",
        b"\0" * BLOCK,
        plain[:511],
        plain + b"\0",
        b" " * BLOCK,
        _with_checksum(b"\0" * BLOCK),
        _with_checksum(plain[:100] + b"  " + plain[102:]),  # blank-led mode field
        _with_checksum(plain[:100] + b"\x80" + plain[101:]),  # base-256 mode
        _with_checksum(plain[:100] + b"\xff" * 8 + plain[108:]),  # negative base-256
        _with_checksum(plain[:100] + b"0o17\0\0\0\0" + plain[108:]),
        _with_checksum(plain[:100] + b"-17\0\0\0\0\0" + plain[108:]),
        _with_checksum(plain[:100] + b"1_7\0\0\0\0\0" + plain[108:]),
        _with_checksum(plain[:100] + b"\x1c17\0\0\0\0" + plain[108:]),  # str.strip's space
        _with_checksum(plain[:100] + b"\t17 \0\0\0\0" + plain[108:]),
        _with_checksum(plain[:100] + b"9\0\0\0\0\0\0\0" + plain[108:]),
    ):
        _same(block)


@pytest.mark.parametrize("fix_checksum", [False, True])
def test_mutated_headers_decode_alike(fix_checksum: bool) -> None:
    """Random byte changes in every field; with the checksum fixed up, each change gets
    past the checksum to the field decoding."""
    rng = random.Random(17)
    headers = _headers()
    alphabet = b"0123456789 \0/\x80\xff-+_xo\t\x1c."
    for _ in range(20_000):
        block = bytearray(rng.choice(headers))
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(BLOCK)
            block[at] = rng.choice(alphabet) if rng.random() < 0.8 else rng.randrange(256)
        _same(_with_checksum(bytes(block)) if fix_checksum else bytes(block))


def test_whole_archives_read_alike() -> None:
    for data in _archives():
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as stock:
            expected = [_fields(m) for m in stock]
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:", tarinfo=LeanTarInfo) as lean:
            got = [_fields(m) for m in lean]
        assert got == expected


def _fields(info: tarfile.TarInfo) -> tuple[Any, ...]:
    return tuple(getattr(info, name, None) for name in FIELDS if name != "_link_target")


def test_plain_headers_take_the_lean_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read through ``tarfile`` itself (whichever entry point this Python's calls), a
    layer's usual headers (PAX, ustar numbers) take the lean path; the odd ones (base-256,
    sparse) and the end-of-archive block go to ``tarfile``'s decoder."""
    calls = {"lean": 0, "stock": 0}
    for path in ("lean", "stock"):
        real = getattr(LeanTarInfo, "_" + path).__func__

        def counted(cls: Any, *args: Any, _real: Any = real, _path: str = path) -> Any:
            calls[_path] += 1
            return _real(cls, *args)

        monkeypatch.setattr(LeanTarInfo, "_" + path, classmethod(counted))
    pax = _archives()[2]
    with tarfile.open(fileobj=io.BytesIO(pax), mode="r:", tarinfo=LeanTarInfo) as tar:
        assert len(tar.getmembers()) > 10
    assert calls["lean"] == len(_header_blocks(pax))  # each member's (PAX header and) own
    assert calls["stock"] <= 2  # the zero blocks at the end
    calls["stock"] = 0
    LeanTarInfo.frombuf(_sparse_header(), "utf-8", "surrogateescape")
    assert calls["stock"] == 1


def test_header_after_a_long_name_keeps_its_type() -> None:
    """With ``dircheck`` off (the newer tarfile, for the header after a GNU long name or
    a PAX header), a regular file whose short name ends in "/" stays a file."""
    info = tarfile.TarInfo("dir/")
    info.type = tarfile.AREGTYPE
    block = info.tobuf(tarfile.USTAR_FORMAT)
    as_dir = LeanTarInfo._decode(block, "utf-8", "surrogateescape", True)
    as_file = LeanTarInfo._decode(block, "utf-8", "surrogateescape", False)
    assert (as_dir.type, as_dir.name) == (tarfile.DIRTYPE, "dir")
    assert (as_file.type, as_file.name) == (tarfile.AREGTYPE, "dir/")
