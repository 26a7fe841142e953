"""The source side of a conversion: a stored layer blob as an ordered list of tar members.

The blob is inflated once into a spool file in the store's ingest area (never into memory):
prioritised files must be written first, wherever the source tar has them, so the writer
needs random access to the members. ``tarfile`` indexes the spool (headers only, data stays
on disk) and hands out each member's data as a file object.

Member order (the eStargz landmark convention, used for zstd:chunked too): when some of the
``--prefetch-from`` paths are in the layer, those members come first, in the list's order,
each preceded by its ancestor directories of this layer and, for a hard link, by its target;
then the ``.prefetch.landmark`` file; then everything else in the source's order. When none
is, ``.no.prefetch.landmark`` comes first. A source that is seekable already loses its
old TOC and landmark entries (they are made anew). Every occurrence of a moved path moves together
(in their own order), so a path that a layer names twice still ends with its last entry.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from fsnap.archive.compression import open_uncompressed
from fsnap.errors import InvalidArgument, Unsupported
from fsnap.oci import Descriptor
from fsnap.unpack.blob import SizeLimit

PREFETCH_LANDMARK = ".prefetch.landmark"
NO_PREFETCH_LANDMARK = ".no.prefetch.landmark"
LANDMARK_CONTENTS = b"\x0f"
# What a seekable source layer already holds at its root: replaced, never carried over (a
# second TOC or landmark would mislead readers of the new one).
REPLACED = frozenset({"stargz.index.json", PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK})
_COPY = 1 << 20
# Member types a layer may hold, as the converter writes them (sparse/contiguous files
# become plain regular files; their data is read back in full).
_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE, tarfile.GNUTYPE_SPARSE)
_OTHER = (tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE)
_DEVICES = (tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE)
# PAX records the writer derives again from the member (a stale one would win over a
# changed field), and those of GNU sparse files (their data is written out in full).
_DERIVED = ("path", "linkpath", "size")


@dataclass(frozen=True)
class Member:
    """One tar member to write: its header and, for a regular file, its data."""

    info: tarfile.TarInfo
    data: IO[bytes] | None


def clean(name: str) -> str:
    """A member name as a path relative to the root (``""`` for the root itself)."""
    path = posixpath.normpath("/" + name).lstrip("/")
    return "" if path == "." else path


@contextmanager
def spooled_members(
    blob: Path, desc: Descriptor, spool_dir: Path, prefetch: Sequence[str]
) -> Iterator[list[Member]]:
    """The members of the stored layer ``blob`` in the order to write them (see the module
    docstring), landmark included; their data files stay valid inside the ``with``."""
    limit = SizeLimit().for_blob(desc.size)
    with tempfile.TemporaryFile(dir=spool_dir) as spool:
        _inflate(blob, desc, spool, limit)
        spool.seek(0)
        try:
            with tarfile.open(
                fileobj=spool, mode="r:", encoding="utf-8", errors="surrogateescape"
            ) as tar:
                infos = [i for i in tar.getmembers() if clean(i.name) not in REPLACED]
                yield [_member(tar, desc, item) for item in ordered(infos, prefetch)]
        except tarfile.TarError as e:
            raise InvalidArgument(f"layer {desc.digest}: broken tar archive: {e}") from None


def _inflate(blob: Path, desc: Descriptor, out: BinaryIO, limit: int) -> None:
    with open(blob, "rb") as raw:
        reader = open_uncompressed(raw, desc.media_type)
        total = 0
        while chunk := reader.read(_COPY):
            total += len(chunk)
            if total > limit:
                raise InvalidArgument(
                    f"layer {desc.digest} inflates to more than {limit} bytes: refused"
                )
            out.write(chunk)


def _member(tar: tarfile.TarFile, desc: Descriptor, item: tarfile.TarInfo | str) -> Member:
    if isinstance(item, str):
        return Member(landmark(item), io.BytesIO(LANDMARK_CONTENTS))
    header = _normalized(desc, item)
    data = tar.extractfile(item) if header.isreg() and header.size else None
    return Member(header, data)


def _normalized(desc: Descriptor, info: tarfile.TarInfo) -> tarfile.TarInfo:
    """A copy of ``info`` as the converter writes it: regular files as REGTYPE, no sparse
    maps, no PAX records the header will be derived from again."""
    if info.type not in (*_REGULAR, *_OTHER, *_DEVICES):
        raise Unsupported(f"layer {desc.digest}: {info.name!r} has tar type {info.type!r}")
    out = tarfile.TarInfo(info.name)
    for field in ("mode", "uid", "gid", "uname", "gname", "mtime", "linkname", "size"):
        setattr(out, field, getattr(info, field))
    out.devmajor, out.devminor = info.devmajor, info.devminor
    out.type = tarfile.REGTYPE if info.type in _REGULAR else info.type
    if not out.isreg():
        out.size = 0
    out.pax_headers = {
        k: v
        for k, v in info.pax_headers.items()
        if k not in _DERIVED and not k.startswith("GNU.sparse.")
    }
    return out


def landmark(name: str) -> tarfile.TarInfo:
    """The landmark file ``name``: one byte, 0xf, mode 0644, owned by root, time zero."""
    info = tarfile.TarInfo(name)
    info.size = len(LANDMARK_CONTENTS)
    info.mode = 0o644
    info.uname = info.gname = ""
    return info


def ordered(infos: list[tarfile.TarInfo], prefetch: Sequence[str]) -> list[tarfile.TarInfo | str]:
    """``infos`` with the prioritised ones first and the right landmark, named by a string
    (module docstring)."""
    where: dict[str, list[int]] = {}
    for i, info in enumerate(infos):
        where.setdefault(clean(info.name), []).append(i)
    first: list[int] = []
    taken: set[int] = set()

    def take(path: str, depth: int = 0) -> None:
        positions = where.get(path)
        if not positions or positions[0] in taken or depth > 64:
            return
        parent = posixpath.dirname(path)
        if parent and parent != path:
            take(parent, depth + 1)
        for i in positions:
            if infos[i].islnk():
                take(clean(infos[i].linkname), depth + 1)
        for i in positions:
            if i not in taken:
                taken.add(i)
                first.append(i)

    for path in prefetch:
        if clean(path) in where:
            take(clean(path))
    rest = [infos[i] for i in range(len(infos)) if i not in taken]
    if not first:
        return [NO_PREFETCH_LANDMARK, *rest]
    return [*(infos[i] for i in first), PREFETCH_LANDMARK, *rest]


def read_prefetch_list(path: Path, max_bytes: int = 16 << 20) -> list[str]:
    """The paths of a ``--prefetch-from`` file: one per line, absolute or relative to the
    image root; blank lines and ``#`` comments skipped."""
    with open(path, "rb") as src:
        data = src.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise InvalidArgument(f"{path}: a prefetch list over {max_bytes} bytes")
    text = data.decode("utf-8", "surrogateescape")
    lines = (line.strip() for line in text.splitlines())
    return [clean(line) for line in lines if line and not line.startswith("#")]
