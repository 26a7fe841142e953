"""TOC readers on real seekable blobs (ctr-remote eStargz and zstd:chunked, skopeo
zstd:chunked) and on hostile TOCs: what a registry can send must never be trusted."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
import zstandard
from image_builder import make_image, make_layer
from support.lazy import CONVERSIONS, converted, fetch_blob, fetch_manifest, varied_members
from support.registry import RegistryProcess

from fsnap.errors import DigestMismatch, InvalidArgument
from fsnap.lazy import toc as toc_mod
from fsnap.lazy.chunks import decode_chunk
from fsnap.lazy.toc import (
    ESTARGZ_TOC_DIGEST,
    Seekable,
    estargz_toc_offset,
    parse_toc,
    seekable,
    toc_of_blob,
)

pytestmark = pytest.mark.timeout(600)
NONCE = os.urandom(16).hex().encode()


@dataclass
class Real:
    name: str
    layer: dict[str, Any]
    blob: bytes

    @property
    def seekable(self) -> Seekable:
        found = seekable(self.layer["mediaType"], self.layer["size"], self.layer["annotations"])
        assert found is not None
        return found


@pytest.fixture(scope="module")
def real_blobs(
    registry: RegistryProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Real]]:
    """The varied layer converted by ctr-remote (eStargz, zstd:chunked) and skopeo."""
    image = make_image([make_layer(varied_members(NONCE))])
    with converted(registry, tmp_path_factory.mktemp("containerd"), "lazy-toc", image):
        out = []
        for tag in CONVERSIONS:
            layer = fetch_manifest(registry.url, "lazy-toc", tag)["layers"][0]
            out.append(Real(tag, layer, fetch_blob(registry.url, "lazy-toc", layer["digest"])))
        yield out


def zstd_compress(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


def _source() -> dict[str, tuple[tarfile.TarInfo, bytes | None]]:
    return {info.name: (info, data) for info, data in varied_members(NONCE)}


def test_real_tocs_describe_the_source_tar(real_blobs: list[Real]) -> None:
    source = _source()
    for real in real_blobs:
        toc = toc_of_blob(real.seekable, real.blob)
        assert toc.format == ("estargz" if real.name == "esgz" else "zstd:chunked")
        assert [e.path for e in toc.entries] == list(source), real.name
        for entry in toc.entries:
            info, data = source[entry.path]
            assert entry.meta.mode == info.mode, (real.name, entry.path)
            assert entry.meta.mtime == info.mtime * 10**9
            if info.isreg():
                assert entry.kind == "file"
                assert entry.size == info.size
                got = b"".join(
                    decode_chunk(toc.format, c, real.blob[c.start : c.end]) for c in entry.chunks
                )
                assert got == data, (real.name, entry.path)
            elif info.issym() or info.islnk():
                assert entry.meta.link == info.linkname
        big = next(e for e in toc.entries if e.path == "usr/big.bin")
        if real.name != "skopeo":  # ctr-remote chunks at 4 MiB; skopeo 1.9's writer does not
            assert len(big.chunks) == 2
        assert all(c.end <= toc.payload_end for e in toc.entries for c in e.chunks)


def test_tampered_toc_is_refused(real_blobs: list[Real]) -> None:
    for real in real_blobs:
        wrong = "sha256:" + hashlib.sha256(b"not the toc").hexdigest()
        with pytest.raises(DigestMismatch, match="annotation pins"):
            toc_of_blob(replace(real.seekable, digest=wrong), real.blob)
    esgz = real_blobs[0]
    toc = toc_of_blob(esgz.seekable, esgz.blob)
    blob = bytearray(esgz.blob)
    blob[toc.payload_end + 20] ^= 0xFF  # inside the TOC's gzip member
    with pytest.raises((DigestMismatch, InvalidArgument)):
        toc_of_blob(esgz.seekable, bytes(blob))


def test_corrupted_chunk_is_refused(real_blobs: list[Real]) -> None:
    for real in real_blobs:
        toc = toc_of_blob(real.seekable, real.blob)
        chunk = next(e for e in toc.entries if e.path == "usr/big.bin").chunks[0]
        data = bytearray(real.blob[chunk.start : chunk.end])
        data[20] ^= 0x01  # inside the first block: a later frame may not be needed
        with pytest.raises(DigestMismatch):
            decode_chunk(toc.format, chunk, bytes(data))
        other = b"x" * chunk.size  # well-formed data, just not this chunk's
        packed = gzip.compress(other) if toc.format == "estargz" else zstd_compress(other)
        with pytest.raises(DigestMismatch, match="its TOC says"):
            decode_chunk(toc.format, chunk, packed)
        with pytest.raises(DigestMismatch):  # truncated
            decode_chunk(toc.format, chunk, real.blob[chunk.start : chunk.start + 10])


def test_unpinned_layers_are_not_seekable() -> None:
    assert seekable("application/vnd.oci.image.layer.v1.tar+gzip", 1000, {}) is None
    with pytest.raises(InvalidArgument, match="not a sha256"):
        seekable("application/vnd.oci.image.layer.v1.tar+gzip", 1000, {ESTARGZ_TOC_DIGEST: "md5:x"})
    position = "io.github.containers.zstd-chunked.manifest-position"
    checksum = "io.github.containers.zstd-chunked.manifest-checksum"
    pin = "sha256:" + "0" * 64
    mt = "application/vnd.oci.image.layer.v1.tar+zstd"
    for bad in ("10:5000:20:1", "10:5:20:2", "a:b:c:d", "0:5:20:1"):
        with pytest.raises(InvalidArgument):
            seekable(mt, 1000, {position: bad, checksum: pin})


def test_footer_checks() -> None:
    with pytest.raises(InvalidArgument, match="no eStargz footer"):
        estargz_toc_offset(b"\0" * 51, 1000)
    good = gzip.compress(b"")  # a plain gzip member has no STARGZ extra field
    with pytest.raises(InvalidArgument):
        estargz_toc_offset(good.ljust(51, b"\0"), 1000)


LAYER = Seekable("estargz", "sha256:" + "0" * 64, 10_000)
DIGEST = "sha256:" + "1" * 64


def _parse(entries: list[dict[str, Any]], **kw: Any) -> toc_mod.Toc:
    doc = json.dumps({"version": 1, "entries": entries}).encode()
    return parse_toc(doc, LAYER, payload_end=9_000, **kw)


def _reg(name: str = "f", size: int = 10, offset: int = 100, **more: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "reg",
        "size": size,
        "offset": offset,
        "chunkDigest": DIGEST,
        "mode": 0o644,
        **more,
    }


@pytest.mark.parametrize(
    ("entries", "match"),
    [
        ([_reg(offset=9_500)], "outside the blob's payload"),
        ([_reg(offset=0)], "outside the blob's payload"),
        ([_reg(chunkDigest=None)], "no sha256 chunk digest"),
        ([_reg(chunkDigest="sha256:zz")], "no sha256 chunk digest"),
        (
            [_reg(chunkSize=4), {"type": "chunk", "name": "f", "offset": 200, "chunkOffset": 5}],
            "do not tile",
        ),
        ([_reg(chunkSize=4)], "do not add up"),
        ([{"type": "chunk", "name": "f", "offset": 200, "chunkOffset": 0}], "follows no file"),
        ([_reg(name="a\0b")], "bad name"),
        ([_reg(size=-1)], "not an integer"),
        ([_reg(uid=1 << 40)], "not an integer"),
        ([_reg(modtime="yesterday")], "bad modtime"),
        ([_reg(xattrs={"user.x": "!!!"})], "not base64"),
        ([{"name": "l", "type": "symlink", "mode": 0o777}], "without a target"),
        ([{"name": "x", "type": "socket", "mode": 0}], "unknown type"),
        ([_reg(size=1 << 30)], "over"),  # one chunk over MAX_CHUNK
    ],
)
def test_hostile_entries_are_refused(entries: list[dict[str, Any]], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        _parse(entries)


def test_declared_size_and_entry_count_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidArgument, match="declare over 15 bytes"):
        _parse([_reg("a", 10), _reg("b", 10, offset=200)], max_size=15)
    monkeypatch.setattr(toc_mod, "MAX_ENTRIES", 3)
    with pytest.raises(InvalidArgument, match="over 3"):
        _parse([{"name": f"d{i}", "type": "dir", "mode": 0o755} for i in range(4)])
    monkeypatch.setattr(toc_mod, "MAX_TOC_BYTES", 100)
    with pytest.raises(InvalidArgument, match="over 100"):
        _parse([{"name": "d" * 200, "type": "dir", "mode": 0o755}])


def test_landmarks_are_hidden_and_mark_the_prefetch_end() -> None:
    toc = _parse(
        [
            _reg("bin/sh", 10, 100),
            _reg(".prefetch.landmark", 1, 300),
            _reg("etc/x", 10, 500),
            {"name": "./stargz.index.json", "type": "reg", "mode": 0o644},
        ]
    )
    assert [e.path for e in toc.entries] == ["bin/sh", "etc/x"]
    assert toc.prefetch_end == 300
    sh = toc.entries[0].chunks[0]
    assert (sh.start, sh.end) == (100, 300)  # ends where the next file's data starts


@pytest.mark.parametrize(
    "later",
    [
        {"name": "./f", "type": "dir", "mode": 0o755},
        {"name": "f", "type": "fifo", "mode": 0o644},
        {"name": "f", "type": "symlink", "linkName": "/etc/passwd", "mode": 0o777},
        {"name": "f", "type": "reg", "mode": 0o644},  # empty: nothing to fetch
    ],
)
def test_a_file_a_later_entry_replaces_is_none_to_fetch(later: dict[str, Any]) -> None:
    """The last TOC entry for a path wins whatever its kind, as the applier lays the
    layer out: the file table (what reads and the prefetch write) must not keep the
    first file, which would be written over the directory, fifo or symlink."""
    toc = _parse([_reg("f", 10, 100), later, _reg("g", 10, 200)])
    assert list(toc.file_paths()) == ["g"]


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        (_reg(name="d/" + "x" * 256), "bad name"),
        (_reg(name="\ud800"), "bad name"),
        ({"name": "l", "type": "symlink", "linkName": "a\udfffb", "mode": 0o777}, "bad link"),
        (_reg(xattrs={"user.\ud800": ""}), "bad xattr"),
        (_reg(xattrs={"user." + "x" * 251: ""}), "bad xattr"),
    ],
)
def test_names_no_disk_can_hold_are_refused(entry: dict[str, Any], match: str) -> None:
    """Names, link targets and xattr names must be bytes a file system takes (what the
    applier would refuse when creating them; a lazy file is created only later)."""
    with pytest.raises(InvalidArgument, match=match):
        _parse([entry])


def test_names_the_disk_can_hold_pass() -> None:
    """255 bytes a component, and the surrogate escapes of non-UTF-8 bytes, are fine."""
    name = "d/" + "é" * 127 + "x/\udcff"
    toc = _parse([_reg(name=name, xattrs={"user." + "x" * 250: ""})])
    assert toc.entries[0].name == name


def test_a_chunk_spans_at_most_max_span_of_a_huge_blob() -> None:
    """A read holds its chunks' compressed bytes in memory, from a chunk's offset to where
    the next file's data starts. A TOC whose one small file is followed by nothing in a
    blob the descriptor says is 1 TiB must not make a read fetch (and hold) the whole
    blob: a chunk's span is capped (its member cannot be longer than what it inflates to,
    ``innerOffset`` and ``size`` at most ``MAX_CHUNK`` each, plus framing)."""
    huge = Seekable("estargz", "sha256:" + "0" * 64, 1 << 40)
    doc = json.dumps({"version": 1, "entries": [_reg("f", 10, 100)]}).encode()
    (chunk,) = parse_toc(doc, huge, payload_end=(1 << 40) - 100).entries[0].chunks
    assert chunk.end - chunk.start <= 2 * toc_mod.MAX_CHUNK + (1 << 20)
    assert chunk.end - chunk.start >= 2 * toc_mod.MAX_CHUNK  # incompressible data fits
