"""Tables of contents of seekable layers: where they are, what they say, whether to trust them.

Two formats, one model (``Toc``: entries in archive order, each regular file with the
``Chunk`` list that says where its bytes sit in the compressed blob):

- **eStargz** (containerd/stargz-snapshotter ``docs/estargz.md``): a gzip blob whose last
  members are the TOC (a tar holding one file, ``stargz.index.json``) and a 51-byte footer,
  an empty gzip member whose extra field ``SG`` holds ``%016x`` of the TOC's offset followed
  by ``STARGZ``. The layer descriptor's annotation ``containerd.io/snapshot/stargz/toc.digest``
  pins the sha256 of the JSON. A chunk's compressed bytes start at its ``offset`` (a gzip
  member boundary) and end where the next member holding file data starts (or at the TOC);
  ``innerOffset`` skips uncompressed bytes of a member shared by several small chunks.
- **zstd:chunked** (containers/storage ``pkg/chunked``): zstd frames per file payload and per
  chunk; the TOC is zstd-compressed JSON in a skippable frame. The annotation
  ``io.github.containers.zstd-chunked.manifest-position`` = ``offset:length:uncompressed:1``
  locates it, ``...manifest-checksum`` pins the sha256 of its *compressed* bytes. A chunk
  ends at the next chunk's offset, at the file's ``endOffset``, else at the next payload.
  ``chunkType: zeros`` chunks are holes: nothing to fetch. (stargz-snapshotter's own
  ``--zstdchunked`` writes eStargz-style entries in this container; both read the same.)

A TOC comes from a registry, so it is hostile until checked: its digest must match the
annotation (``DigestMismatch``, exit 6); the JSON and the entry count are capped; every
chunk must lie inside the blob's payload, chunks must tile their file exactly, sizes,
ids and a chunk's compressed span (``MAX_SPAN``) are bounded, and the files may declare
at most ``max_size`` bytes (the unpacker's inflation rule). Names must be bytes a file
system takes (``_on_disk``) and are otherwise left as the TOC spells them: the tree is
laid out by the tar applier (``fsnap.lazy.skeleton``), whose path containment applies
unchanged, and a file with contents is created later only through real directories of
its layer (``fsnap.lazy.state.write_file``).

The landmark files (``.prefetch.landmark``, ``.no.prefetch.landmark``) and the TOC's own tar
entry are not part of the image's tree (stargz-snapshotter hides them): ``Toc.entries``
leaves them out; ``Toc.prefetch_end`` keeps where the prioritised files end.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import io
import json
import re
import tarfile
import zlib
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

import zstandard

from fsnap.archive.entry import Entry, Kind
from fsnap.archive.resolve import clean_name
from fsnap.digest import sha256_of
from fsnap.errors import DigestMismatch, InvalidArgument

ESTARGZ_TOC_DIGEST = "containerd.io/snapshot/stargz/toc.digest"
ZSTD_CHUNKED_CHECKSUM = "io.github.containers.zstd-chunked.manifest-checksum"
ZSTD_CHUNKED_POSITION = "io.github.containers.zstd-chunked.manifest-position"
# The names older containers/storage (and stargz-snapshotter's ctr-remote) write.
_ZSTD_OLD_PREFIX = "io.containers.zstd-chunked."
_ZSTD_PREFIX = "io.github.containers.zstd-chunked."
ESTARGZ_FOOTER_SIZE = 51
TOC_NAME = "stargz.index.json"
PREFETCH_LANDMARK = ".prefetch.landmark"
NO_PREFETCH_LANDMARK = ".no.prefetch.landmark"
HIDDEN = frozenset({TOC_NAME, PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK})

# Limits on what a registry may make us hold. Real TOCs: ~250 bytes of JSON per entry, so a
# 64 MiB TOC describes ~250,000 entries (a Debian+python image has ~5,000 per layer).
MAX_TOC_BYTES = 64 << 20
MAX_ENTRIES = 1_000_000
# A chunk is decompressed in memory on a read: eStargz's default chunk is 4 MiB,
# zstd:chunked's rolling checksum averages 64 KiB (zero runs are holes, never fetched).
MAX_CHUNK = 64 << 20
# A read holds its chunks' compressed bytes in memory: a chunk's span in the blob ends at
# the next file's data, and a TOC may put none after a chunk in a blob of any size. A
# gzip member / zstd frame is at most what it inflates to (``innerOffset`` and ``size``,
# each at most ``MAX_CHUNK``) and some framing: a span is cut there.
MAX_SPAN = 2 * MAX_CHUNK + (1 << 20)
MAX_NAME = 16 << 10
NAME_MAX = 255  # bytes of one path component (Linux; fsnap.archive.format's too)
XATTR_NAME_MAX = 255
MAX_XATTRS = 256
MAX_XATTR_VALUE = 64 << 10
MAX_ID = (1 << 32) - 1
MAX_DEVICE = (1 << 21) - 1  # what a ustar header's 7 octal digits hold
# The first request for an eStargz TOC reads this much of the blob's tail: the footer and,
# for small layers, the whole TOC in one round trip (a bigger TOC costs a second one).
ESTARGZ_TAIL = 64 << 10

Format = Literal["estargz", "zstd:chunked"]
Fetch = Callable[[int, int], Awaitable[bytes]]  # (start, end) -> the blob's bytes [start, end)

_KIND_OF: dict[str, Kind] = {
    "reg": "file",
    "dir": "dir",
    "symlink": "symlink",
    "hardlink": "hardlink",
    "char": "char",
    "block": "block",
    "fifo": "fifo",
}
_KINDS = frozenset({*_KIND_OF, "chunk"})
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$", re.ASCII)
_FOOTER_EXTRA = re.compile(rb"^SG\x16\x00([0-9a-f]{16})STARGZ$")


@dataclass(frozen=True)
class Chunk:
    """``size`` bytes of a file from uncompressed offset ``offset`` on.

    Their compressed bytes are the blob's ``[start, end)``: decompressing from ``start`` and
    skipping ``inner`` bytes gives them (``fsnap.lazy.chunks``), and they hash to ``digest``.
    A ``zeros`` chunk is a hole: ``size`` zero bytes, nothing to fetch.
    """

    offset: int
    size: int
    start: int
    end: int
    inner: int
    digest: str
    zeros: bool = False


@dataclass(frozen=True)
class TocEntry:
    """One tar entry as the TOC describes it, in the index's terms: ``meta.path`` is the
    name exactly as the TOC spells it (not cleaned), ``meta.kind`` is ``file`` for the TOC's
    ``reg``, ``meta.mode`` permission bits only. ``chunks`` tile a file's ``meta.size``
    bytes in order (none for an empty file)."""

    meta: Entry
    chunks: tuple[Chunk, ...] = ()

    @property
    def name(self) -> str:
        return self.meta.path

    @property
    def kind(self) -> str:
        return self.meta.kind

    @property
    def size(self) -> int:
        return self.meta.size

    @property
    def path(self) -> str:
        """The name as a layer-relative index path (cleaned, ``..`` clamped at the root)."""
        return "/".join(clean_name(self.name))


@dataclass
class Toc:
    """A verified table of contents (``raw``: its JSON). ``digest`` is what the annotation
    pinned; chunks end at or before ``payload_end`` (where the TOC's own bytes begin).
    ``prefetch_end``: the blob offset of ``.prefetch.landmark`` (chunks starting before it
    are the prioritised files), None when the layer prioritises nothing."""

    format: Format
    digest: str
    entries: list[TocEntry]
    payload_end: int
    prefetch_end: int | None = None
    raw: bytes = b""  # the verified JSON it was parsed from

    def files(self) -> list[TocEntry]:
        """The regular files with contents."""
        return [e for e in self.entries if e.chunks]

    def file_paths(self) -> dict[str, TocEntry]:
        """The files with contents, by index path. The last TOC entry for a path wins,
        whatever its kind (as the applier lays it out): a file that a later directory,
        fifo, device or empty file replaces is none to fetch."""
        last = {e.path: e for e in self.entries}
        return {path: e for path, e in last.items() if e.kind == "file" and e.chunks}


@dataclass(frozen=True)
class Seekable:
    """What a layer descriptor says about its TOC (see ``seekable``)."""

    format: Format
    digest: str  # eStargz: sha256 of the TOC JSON; zstd:chunked: of its compressed bytes
    blob_size: int
    position: tuple[int, int, int] | None = None  # zstd:chunked: offset, length, uncompressed
    json_digest: str | None = None  # zstd:chunked by ctr-remote: the JSON's pin as well


def seekable(media_type: str, size: int, annotations: Mapping[str, str]) -> Seekable | None:
    """The layer's TOC location if its descriptor makes it lazily pullable, else None.

    A layer is seekable only with its pinning annotation (an unpinned TOC could say
    anything); a malformed annotation is an ``InvalidArgument``, never a silent full pull."""
    mt = media_type.lower()
    zstd = {
        _ZSTD_PREFIX + k[len(_ZSTD_OLD_PREFIX) :] if k.startswith(_ZSTD_OLD_PREFIX) else k: v
        for k, v in annotations.items()
    }
    if ZSTD_CHUNKED_POSITION in zstd and "zstd" in mt:
        checksum = _pinned(zstd.get(ZSTD_CHUNKED_CHECKSUM), ZSTD_CHUNKED_CHECKSUM)
        json_pin = annotations.get(ESTARGZ_TOC_DIGEST)
        json_digest = None if json_pin is None else _pinned(json_pin, ESTARGZ_TOC_DIGEST)
        return Seekable("zstd:chunked", checksum, size, _position(zstd, size), json_digest)
    if ESTARGZ_TOC_DIGEST in annotations and "gzip" in mt:
        digest = _pinned(annotations.get(ESTARGZ_TOC_DIGEST), ESTARGZ_TOC_DIGEST)
        if size < ESTARGZ_FOOTER_SIZE + 20:
            raise InvalidArgument(f"eStargz layer of {size} bytes: too small for a TOC")
        return Seekable("estargz", digest, size)
    return None


async def load_toc(layer: Seekable, fetch: Fetch, max_size: int | None = None) -> Toc:
    """Fetch (one or two ranges), verify and parse the TOC of ``layer``.

    ``max_size`` caps the bytes its files may declare (None: no cap)."""
    if layer.format == "zstd:chunked":
        assert layer.position is not None
        offset, length, uncompressed = layer.position
        raw = await fetch(offset, offset + length)
        _check(raw, layer.digest, "zstd:chunked TOC")
        text = _unzstd(raw, uncompressed)
        if layer.json_digest is not None:
            _check(text, layer.json_digest, "zstd:chunked TOC JSON")
        return parse_toc(text, layer, payload_end=offset - 8, max_size=max_size)
    tail_start = max(0, layer.blob_size - ESTARGZ_TAIL)
    tail = await fetch(tail_start, layer.blob_size)
    toc_offset = estargz_toc_offset(tail[-ESTARGZ_FOOTER_SIZE:], layer.blob_size)
    if toc_offset < tail_start:
        head = await fetch(toc_offset, tail_start)
        tail = head + tail
        tail_start = toc_offset
    region = tail[toc_offset - tail_start : len(tail) - ESTARGZ_FOOTER_SIZE]
    text = estargz_toc_json(region)
    _check(text, layer.digest, "eStargz TOC")
    return parse_toc(text, layer, payload_end=toc_offset, max_size=max_size)


def toc_of_blob(layer: Seekable, blob: bytes, max_size: int | None = None) -> Toc:
    """``load_toc`` on a blob held in memory (tests, converters checking their output)."""

    async def fetch(start: int, end: int) -> bytes:
        return blob[start:end]

    return _run(load_toc(layer, fetch, max_size))


def estargz_toc_offset(footer: bytes, blob_size: int) -> int:
    """The TOC offset an eStargz footer encodes (refused unless exactly the 51-byte form)."""
    if len(footer) != ESTARGZ_FOOTER_SIZE or footer[:4] != b"\x1f\x8b\x08\x04":
        raise InvalidArgument("not an eStargz layer: its last 51 bytes are no eStargz footer")
    xlen = int.from_bytes(footer[10:12], "little")
    found = _FOOTER_EXTRA.match(footer[12 : 12 + xlen]) if xlen == 26 else None
    if found is None:
        raise InvalidArgument("not an eStargz layer: its footer has no STARGZ extra field")
    offset = int(found.group(1), 16)
    if offset >= blob_size - ESTARGZ_FOOTER_SIZE:
        raise InvalidArgument(f"eStargz footer: TOC offset {offset} is past the blob's payload")
    return offset


def estargz_toc_json(region: bytes) -> bytes:
    """The JSON of ``stargz.index.json`` from the TOC's gzip member (a one-file tar)."""
    try:
        inflater = zlib.decompressobj(wbits=31)
        tar_bytes = inflater.decompress(region, MAX_TOC_BYTES + 4096)
        if inflater.unconsumed_tail:
            raise InvalidArgument(f"eStargz TOC inflates past {MAX_TOC_BYTES} bytes")
        with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
            member = tar.next()
            if member is None or member.name != TOC_NAME or not member.isfile():
                raise InvalidArgument(f"eStargz TOC: the tar entry is not {TOC_NAME}")
            stream = tar.extractfile(member)
            assert stream is not None
            return stream.read()
    except (zlib.error, tarfile.TarError, EOFError) as e:
        raise InvalidArgument(f"eStargz TOC: {e}") from None


def parse_toc(
    text: bytes, layer: Seekable, *, payload_end: int, max_size: int | None = None
) -> Toc:
    """The ``Toc`` of verified TOC JSON ``text`` (checked against every limit above)."""
    if len(text) > MAX_TOC_BYTES:
        raise InvalidArgument(f"{layer.format} TOC of {len(text)} bytes: over {MAX_TOC_BYTES}")
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise InvalidArgument(f"{layer.format} TOC is not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("version") != 1:
        raise InvalidArgument(f"{layer.format} TOC: no version 1 document")
    rows = doc.get("entries")
    if not isinstance(rows, list):
        raise InvalidArgument(f"{layer.format} TOC: no entries list")
    if len(rows) > MAX_ENTRIES:
        raise InvalidArgument(f"{layer.format} TOC: {len(rows)} entries, over {MAX_ENTRIES}")
    if not 0 < payload_end <= layer.blob_size:
        raise InvalidArgument(f"{layer.format} TOC: its position is outside the blob")
    toc = _Builder(layer, payload_end, max_size).build(rows)
    toc.raw = text
    return toc


class _Builder:
    """One pass over the TOC rows: entries, then each file's chunk list closed and checked."""

    def __init__(self, layer: Seekable, payload_end: int, max_size: int | None) -> None:
        self.layer = layer
        self.payload_end = payload_end
        self.max_size = max_size
        self.declared = 0

    def build(self, rows: list[Any]) -> Toc:
        entries: list[TocEntry] = []
        pieces: list[list[dict[str, Any]]] = []  # per entry: its reg row and chunk rows
        for number, row in enumerate(rows):
            if not isinstance(row, dict):
                raise self.bad(number, "not an object")
            kind = row.get("type")
            if kind not in _KINDS:
                raise self.bad(number, f"unknown type {kind!r}")
            if kind == "chunk":
                if not entries or entries[-1].kind != "file" or row.get("name") != entries[-1].name:
                    raise self.bad(number, "a chunk that follows no file of its name")
                pieces[-1].append(row)
                continue
            entries.append(self.entry(number, row))
            pieces.append([row])
        starts = self.starts(rows)
        landmark: int | None = None
        out: list[TocEntry] = []
        for entry, group in zip(entries, pieces, strict=True):
            if entry.kind == "file" and entry.size:
                entry = _with_chunks(entry, self.chunks(entry, group, starts))
            if entry.path in HIDDEN:
                if entry.path == PREFETCH_LANDMARK and entry.chunks:
                    landmark = entry.chunks[0].start
                continue
            out.append(entry)
        return Toc(self.layer.format, self.layer.digest, out, self.payload_end, landmark)

    def bad(self, number: int, why: str) -> InvalidArgument:
        return InvalidArgument(f"{self.layer.format} TOC entry {number}: {why}")

    def entry(self, number: int, row: dict[str, Any]) -> TocEntry:
        name = row.get("name")
        if not isinstance(name, str) or not _path_on_disk(name):
            raise self.bad(number, f"bad name {str(name)[:80]!r}")
        kind = str(row["type"])
        link = row.get("linkName", "")
        if not isinstance(link, str) or _on_disk(link, MAX_NAME) is None:
            raise self.bad(number, f"{name!r}: bad link name")
        if kind in ("symlink", "hardlink") and not link:
            raise self.bad(number, f"{name!r}: a {kind} without a target")
        size = _int(row, "size", 1 << 62, self.bad, number) if kind == "reg" else 0
        self.declared += size
        if self.max_size is not None and self.declared > self.max_size:
            raise self.bad(
                number,
                f"{name!r}: the files declare over {self.max_size} bytes, more than "
                "this layer may unpack to (--max-layer-size)",
            )
        try:
            mtime = _mtime(row.get("modtime"))
        except ValueError as e:
            raise self.bad(number, f"{name!r}: bad modtime: {e}") from None
        meta = Entry(
            path=name,
            kind=_KIND_OF[kind],
            mode=_int(row, "mode", 1 << 32, self.bad, number) & 0o7777,
            uid=_int(row, "uid", MAX_ID, self.bad, number),
            gid=_int(row, "gid", MAX_ID, self.bad, number),
            size=size,
            mtime=mtime,
            link=link,
            devmajor=_int(row, "devMajor", MAX_DEVICE, self.bad, number),
            devminor=_int(row, "devMinor", MAX_DEVICE, self.bad, number),
            xattrs=self.xattrs(number, row.get("xattrs")),
        )
        return TocEntry(meta)

    def xattrs(self, number: int, raw: object) -> dict[str, bytes]:
        if raw is None:
            return {}
        if not isinstance(raw, dict) or len(raw) > MAX_XATTRS:
            raise self.bad(number, "bad xattrs")
        out: dict[str, bytes] = {}
        for key, value in raw.items():
            if not isinstance(value, str) or not key or _on_disk(key, XATTR_NAME_MAX) is None:
                raise self.bad(number, f"bad xattr {str(key)[:80]!r}")
            try:
                out[key] = base64.b64decode(value, validate=True)
            except binascii.Error:
                raise self.bad(number, f"xattr {key!r} is not base64") from None
            if len(out[key]) > MAX_XATTR_VALUE:
                raise self.bad(number, f"xattr {key!r} over {MAX_XATTR_VALUE} bytes")
        return out

    def starts(self, rows: list[Any]) -> list[int]:
        """Sorted distinct blob offsets where file data begins, and the payload's end."""
        found = {
            r["offset"]
            for r in rows
            if r.get("type") in ("reg", "chunk")
            and isinstance(r.get("offset"), int)
            and not isinstance(r.get("offset"), bool)
            and r["offset"] > 0
        }
        found.add(self.payload_end)
        return sorted(found)

    def chunks(
        self, entry: TocEntry, group: list[dict[str, Any]], starts: list[int]
    ) -> list[Chunk]:
        """The chunks of a non-empty file, checked to tile its ``size`` inside the payload."""
        out: list[Chunk] = []
        end_of_file = group[0].get("endOffset")
        for index, row in enumerate(group):
            where = f"{entry.name!r} chunk {index}"
            offset = out[-1].offset + out[-1].size if out else 0
            if _opt_int(row, "chunkOffset", offset) != offset:
                raise self.bad_file(where, "chunks do not tile the file")
            size = _opt_int(row, "chunkSize", 0) or entry.size - offset
            if size <= 0 or offset + size > entry.size:
                raise self.bad_file(where, "chunk size outside the file")
            zeros = row.get("chunkType") == "zeros"
            if size > MAX_CHUNK and not zeros:
                raise self.bad_file(where, f"a chunk of {size} bytes (over {MAX_CHUNK})")
            start = _opt_int(row, "offset", -1)
            if not 0 < start < self.payload_end:
                raise self.bad_file(where, f"data offset {start} outside the blob's payload")
            end = min(self.end_of(start, index, group, end_of_file, starts), start + MAX_SPAN)
            inner = _opt_int(row, "innerOffset", 0)
            if not 0 <= inner <= MAX_CHUNK:
                raise self.bad_file(where, "bad innerOffset")
            digest = row.get("chunkDigest") or (row.get("digest") if len(group) == 1 else None)
            if not isinstance(digest, str) or not _DIGEST.match(digest):
                raise self.bad_file(where, "no sha256 chunk digest to verify its data by")
            out.append(Chunk(offset, size, start, end, inner, digest, zeros))
        if out[-1].offset + out[-1].size != entry.size:
            raise self.bad_file(repr(entry.name), "chunks do not add up to the file's size")
        return out

    def end_of(
        self,
        start: int,
        index: int,
        group: list[dict[str, Any]],
        end_of_file: object,
        starts: list[int],
    ) -> int:
        """Where a chunk's compressed bytes end: the next chunk's start, the file's
        ``endOffset`` (zstd:chunked), else the next place file data starts."""
        if index + 1 < len(group):
            nxt = group[index + 1].get("offset")
            if isinstance(nxt, int) and start < nxt <= self.payload_end:
                return nxt
        if (
            isinstance(end_of_file, int)
            and not isinstance(end_of_file, bool)
            and start < end_of_file <= self.payload_end
        ):
            return end_of_file
        return starts[bisect.bisect_right(starts, start)]

    def bad_file(self, where: str, why: str) -> InvalidArgument:
        return InvalidArgument(f"{self.layer.format} TOC: {where}: {why}")


def _path_on_disk(name: str) -> bool:
    """``_on_disk`` for an entry's name: not empty, each component at most ``NAME_MAX``."""
    raw = _on_disk(name, MAX_NAME)
    return raw is not None and raw != b"" and all(len(p) <= NAME_MAX for p in raw.split(b"/"))


def _on_disk(text: str, limit: int) -> bytes | None:
    """``text`` as the bytes the applier writes it as (``os.fsencode``); None when it
    has none (a lone surrogate spells no bytes), holds a NUL or is over ``limit`` bytes.
    The applier refuses such a name as it creates an entry; a lazy pull creates its files
    with contents only later, in the mount's daemon, where a name the disk cannot take
    must never arrive (the write would fail outside any typed error)."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return None
    return None if b"\0" in raw or len(raw) > limit else raw


def _with_chunks(entry: TocEntry, chunks: list[Chunk]) -> TocEntry:
    return replace(entry, chunks=tuple(chunks))


def _int(
    row: dict[str, Any],
    key: str,
    limit: int,
    bad: Callable[[int, str], InvalidArgument],
    number: int,
) -> int:
    value = row.get(key, 0)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise bad(number, f"{key} {value!r} is not an integer in 0..{limit}")
    return value


def _opt_int(row: dict[str, Any], key: str, default: int) -> int:
    value = row.get(key)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgument(f"TOC: {key} {value!r} is not an integer")
    return value


def _mtime(raw: object) -> int:
    """RFC 3339 (what Go's time marshals to) to nanoseconds; empty or absent is 0."""
    if raw is None or raw == "":
        return 0
    if not isinstance(raw, str):
        raise ValueError(repr(raw))
    found = _TIME.match(raw)
    if found is None:
        raise ValueError(repr(raw[:40]))
    zone = "+00:00" if found.group(3) == "Z" else found.group(3)
    whole = datetime.fromisoformat(found.group(1) + zone)
    fraction = int((found.group(2) or "0").ljust(9, "0"))
    return int(whole.timestamp()) * 1_000_000_000 + fraction


def _pinned(value: str | None, name: str) -> str:
    if value is None or not _DIGEST.match(value):
        raise InvalidArgument(f"layer annotation {name} is not a sha256 digest: {value!r}")
    return value


def _position(annotations: Mapping[str, str], size: int) -> tuple[int, int, int]:
    raw = annotations[ZSTD_CHUNKED_POSITION]
    parts = raw.split(":")
    try:
        offset, length, uncompressed, kind = (int(p) for p in parts)
    except ValueError:
        raise InvalidArgument(f"{ZSTD_CHUNKED_POSITION} {raw!r}: not offset:len:len:type") from None
    if kind != 1:
        raise InvalidArgument(f"{ZSTD_CHUNKED_POSITION}: TOC type {kind} (only 1 is known)")
    if not (offset >= 8 and 0 < length <= MAX_TOC_BYTES and offset + length <= size):
        raise InvalidArgument(f"{ZSTD_CHUNKED_POSITION} {raw!r}: outside the blob or too big")
    if not 0 < uncompressed <= MAX_TOC_BYTES:
        raise InvalidArgument(f"{ZSTD_CHUNKED_POSITION}: TOC of {uncompressed} bytes")
    return offset, length, uncompressed


def _check(data: bytes, pinned: str, what: str) -> None:
    actual = sha256_of(data)
    if actual != pinned:
        raise DigestMismatch(f"{what} has digest {actual}, the layer annotation pins {pinned}")


def _unzstd(raw: bytes, uncompressed: int) -> bytes:
    try:
        text = unzstd_prefix(raw, uncompressed + 1)
    except zstandard.ZstdError as e:
        raise InvalidArgument(f"zstd:chunked TOC: {e}") from None
    if len(text) != uncompressed:
        raise InvalidArgument(
            f"zstd:chunked TOC inflates to {len(text)} bytes, its annotation says {uncompressed}"
        )
    return text


def _run(coro: Coroutine[Any, Any, Toc]) -> Toc:
    """Drive a coroutine that never suspends (its fetches answer at once)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("load_toc suspended on an in-memory fetch")


def unzstd_prefix(raw: bytes, limit: int) -> bytes:
    """Up to ``limit`` bytes decompressed from the zstd frames at the start of ``raw``
    (never more, whatever the frames claim: a bomb stops at ``limit``)."""
    reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    parts: list[bytes] = []
    got = 0
    while got < limit:
        part = reader.read(limit - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)
