"""An independent reader of eStargz and zstd:chunked blobs, for checking what was written.

Written from the specs (stargz-snapshotter ``docs/estargz.md``, containers/storage
``pkg/chunked``) with the standard library's zlib and python-zstandard only, sharing no code
with ``fsnap.convert``: it finds the TOC from the footer, checks it against the descriptor's
annotation, then inflates every chunk from its own offset alone and checks its digest and
the whole file's. Checked against blobs made by Debian's ``ctr-remote`` as well.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import tarfile
import zlib
from typing import Any

import zstandard

ESTARGZ_TOC = "containerd.io/snapshot/stargz/toc.digest"
ZSTD_CHECKSUM = "io.github.containers.zstd-chunked.manifest-checksum"
ZSTD_POSITION = "io.github.containers.zstd-chunked.manifest-position"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def estargz_toc(blob: bytes, annotations: dict[str, str]) -> dict[str, Any]:
    """The TOC of an eStargz blob, found through its 51-byte footer and verified."""
    foot = blob[-51:]
    assert foot[:4] == b"\x1f\x8b\x08\x04", foot[:4]
    assert struct.unpack("<H", foot[10:12])[0] == 26
    assert foot[12:14] == b"SG"
    assert struct.unpack("<H", foot[14:16])[0] == 22
    assert foot[32:38] == b"STARGZ", foot[16:38]
    assert zlib.decompressobj(31).decompress(foot) == b""  # an empty, valid gzip member
    toc_offset = int(foot[16:32], 16)
    member = zlib.decompressobj(31).decompress(blob[toc_offset:-51])
    with tarfile.open(fileobj=io.BytesIO(member), mode="r:") as tar:
        (info,) = tar.getmembers()
        assert info.name == "stargz.index.json"
        data = tar.extractfile(info).read()  # type: ignore[union-attr]
    assert sha256(data) == annotations[ESTARGZ_TOC], "TOC digest differs from the annotation"
    toc: dict[str, Any] = json.loads(data)
    assert toc["version"] == 1
    return toc


def estargz_files(blob: bytes, toc: dict[str, Any]) -> dict[str, bytes]:
    """Every non-empty regular file's data, each chunk inflated from its own offset."""
    files: dict[str, bytes] = {}
    sizes: dict[str, int] = {}
    for entry in toc["entries"]:
        if entry["type"] == "reg":
            sizes[entry["name"]] = entry.get("size", 0)
            if not entry.get("size"):
                assert entry.get("digest", sha256(b"")) == sha256(b"")
                continue
            files[entry["name"]] = b""
        if entry["type"] not in ("reg", "chunk"):
            continue
        name = entry["name"]
        start = entry.get("chunkOffset", 0)
        size = entry.get("chunkSize") or sizes[name] - start
        assert len(files[name]) == start, f"{name}: chunks out of order"
        inflated = zlib.decompressobj(31).decompress(blob[entry["offset"] :], size)
        data = inflated[entry.get("innerOffset", 0) : entry.get("innerOffset", 0) + size]
        assert len(data) == size, (name, start)
        assert sha256(data) == entry["chunkDigest"], (name, start)
        files[name] += data
    for entry in toc["entries"]:
        if entry["type"] == "reg" and entry.get("size"):
            assert sha256(files[entry["name"]]) == entry["digest"], entry["name"]
    return files


def zstd_toc(blob: bytes, annotations: dict[str, str]) -> dict[str, Any]:
    """The TOC (manifest) of a zstd:chunked blob, from its annotations, checked against
    its footer frame and the checksum annotation."""
    offset, length, ulength, kind = (int(x) for x in annotations[ZSTD_POSITION].split(":"))
    assert kind == 1
    frame = blob[-72:]
    assert frame[:4] == struct.pack("<I", 0x184D2A50)
    assert struct.unpack("<I", frame[4:8])[0] == 64
    fields = struct.unpack("<7Q", frame[8:64])
    assert frame[64:] == b"GNUlInUx"
    assert fields[:4] == (offset, length, ulength, 1), fields
    skippable = blob[offset - 8 : offset]
    assert skippable == struct.pack("<II", 0x184D2A50, length)
    compressed = blob[offset : offset + length]
    assert sha256(compressed) == annotations[ZSTD_CHECKSUM]
    data = zstandard.ZstdDecompressor().decompress(compressed, max_output_size=ulength)
    assert len(data) == ulength
    toc: dict[str, Any] = json.loads(data)
    assert toc["version"] == 1
    return toc


def zstd_files(blob: bytes, toc: dict[str, Any]) -> dict[str, bytes]:
    """Every non-empty regular file's data, each chunk's frame inflated on its own."""
    files: dict[str, bytes] = {}
    for entry in toc["entries"]:
        name = entry["name"]
        if entry["type"] == "reg":
            if not entry.get("size"):
                continue
            files[name] = b""
            if not entry.get("chunkSize"):  # one frame from offset to endOffset
                frame = blob[entry["offset"] : entry["endOffset"]]
                data = zstandard.ZstdDecompressor().decompressobj().decompress(frame)
                assert len(data) == entry["size"], name
                assert sha256(data) == entry["digest"], name
                files[name] = data
                continue
        if entry["type"] not in ("reg", "chunk") or not entry.get("chunkSize"):
            continue
        assert len(files[name]) == entry.get("chunkOffset", 0), f"{name}: chunk order"
        d = zstandard.ZstdDecompressor().decompressobj()
        data = d.decompress(blob[entry["offset"] :])
        assert len(data) == entry["chunkSize"], (name, len(data))
        assert sha256(data) == entry["chunkDigest"], name
        files[name] += data
    regs = [e for e in toc["entries"] if e["type"] == "reg" and e.get("size")]
    for entry in regs:
        assert sha256(files[entry["name"]]) == entry["digest"], entry["name"]
    return files
