"""Writing a layer's entries as an OCI layer tar, compressed, into the content store.

The tar is written the way the OCI image spec (and containerd's differ) write one, so that
any runtime applies it as ``fsnap.archive.apply`` does:

- whiteouts as empty ``DIR/.wh.NAME`` files; an opaque directory's ``DIR/.wh..wh..opq``
  right after the directory's own header;
- numeric owners only (user and group names stay empty), modes with setuid/setgid/sticky,
  PAX ``mtime`` records where a time has a sub-second part, xattrs as PAX
  ``SCHILY.xattr.NAME`` records holding the raw bytes (tarfile marks them
  ``hdrcharset=BINARY`` when they are not UTF-8), long and non-UTF-8 names as PAX ``path``;
- a deterministic order: parents before children, siblings sorted by their bytes, and the
  first path of a hard-linked inode carrying the data (later ones link to it).

One pass produces both digests: the uncompressed bytes are hashed (the diff_id) on their way
into the compressor, the compressed bytes (the blob digest) on their way to disk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from fsnap.archive.compression import Compression, compress_writer
from fsnap.archive.entry import Entry
from fsnap.archive.format import OPAQUE_MARKER, WHITEOUT_PREFIX
from fsnap.archive.resolve import RootDir
from fsnap.content.store import ContentStore
from fsnap.errors import AlreadyExists, FailedPrecondition
from fsnap.oci import Descriptor
from fsnap.progress import Meter

_COPY = 1 << 20
_TYPES: dict[str, bytes] = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


@dataclass(frozen=True)
class LayerBlob:
    """A layer written to the store: its blob descriptor, diff_id and tar size."""

    descriptor: Descriptor
    diff_id: str
    uncompressed_size: int


class HashingWriter(io.RawIOBase):
    """Passes writes on to ``out`` while hashing (sha256) and counting them."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self._hash.update(b)
        self.size += len(b)
        self._out.write(b)
        return len(b)

    def tell(self) -> int:
        return self.size

    @property
    def count(self) -> int:
        """Bytes written so far (``fsnap.progress.Meter``)."""
        return self.size

    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


def ordered(entries: Iterable[Entry]) -> list[Entry]:
    """Parents before children, siblings by their bytes; in each hard-link group the first
    path in that order becomes the ``file`` and the others link to it (a tar must carry the
    data before the first link to it)."""
    result = sorted(entries, key=lambda e: os.fsencode(e.path).split(b"/") if e.path else [])
    position = {e.path: i for i, e in enumerate(result)}
    groups: dict[str, list[int]] = {}
    for i, entry in enumerate(result):
        if entry.kind == "hardlink" and entry.link in position:
            groups.setdefault(entry.link, [position[entry.link]]).append(i)
    for owner, members in groups.items():
        first = min(members)
        data = result[position[owner]]
        for i in members:
            if i == first:
                result[i] = dataclasses.replace(data, path=result[i].path, kind="file", link="")
            else:
                linked = dataclasses.replace(data, path=result[i].path, kind="hardlink")
                result[i] = dataclasses.replace(linked, link=result[first].path)
    return result


def write_tar(fs_dir: Path, entries: Iterable[Entry], out: BinaryIO) -> None:
    """Write ``entries`` as an uncompressed layer tar to ``out``; file data from ``fs_dir``
    (read without following symlinks anywhere in the path). Blocking: run it in a thread."""
    tree = RootDir(Path(fs_dir))
    try:
        with tarfile.open(
            fileobj=out,
            mode="w",
            format=tarfile.PAX_FORMAT,
            encoding="utf-8",
            errors="surrogateescape",
        ) as tar:
            for entry in ordered(entries):
                _add(tar, tree, entry)
    except OSError as e:
        raise FailedPrecondition(f"reading snapshot directory {fs_dir}: {e}") from None
    finally:
        tree.close()


def _add(tar: tarfile.TarFile, tree: RootDir, entry: Entry) -> None:
    if entry.kind == "whiteout":
        parent, _, name = entry.path.rpartition("/")
        tar.addfile(_marker(parent, WHITEOUT_PREFIX + name, entry.mtime))
        return
    info = tarinfo_of(entry)
    if entry.kind != "file":
        tar.addfile(info)
    else:
        _add_file(tar, tree, entry, info)
    if entry.kind == "dir" and entry.opaque:
        tar.addfile(_marker(entry.path, OPAQUE_MARKER, entry.mtime))


def _add_file(tar: tarfile.TarFile, tree: RootDir, entry: Entry, info: tarfile.TarInfo) -> None:
    """A file's data as it is now on disk (its size from the open file, not the index).

    A running container may have replaced the file since the scan: whatever is not a
    regular file now is refused (a fifo is opened without blocking, so it cannot hang the
    commit waiting for a writer), and so is a file removed, or truncated while its data is
    copied."""
    parent, _, name = entry.path.rpartition("/")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=tree.dir_fd(parent))
    except FileNotFoundError:
        raise FailedPrecondition(
            f"{entry.path!r} changed while it was committed: removed"
        ) from None
    with os.fdopen(fd, "rb") as data:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FailedPrecondition(f"{entry.path!r} changed while it was committed: not a file")
        info.size = st.st_size
        try:
            tar.addfile(info, data)
        except OSError as e:
            if e.errno is not None:
                raise
            raise FailedPrecondition(  # tarfile's short read: the file shrank meanwhile
                f"{entry.path!r} changed while it was committed: shorter than {st.st_size} bytes"
            ) from None


def tarinfo_of(entry: Entry) -> tarfile.TarInfo:
    """The tar header of one (non-whiteout) entry."""
    name = entry.path + "/" if entry.kind == "dir" and entry.path else entry.path or "./"
    info = tarfile.TarInfo(name)
    info.type = _TYPES[entry.kind]
    info.mode = entry.mode & 0o7777
    info.uid, info.gid = entry.uid, entry.gid
    info.uname = info.gname = ""
    _set_mtime(info, entry.mtime)
    if entry.kind in ("symlink", "hardlink"):
        info.linkname = entry.link
    if entry.kind in ("char", "block"):
        info.devmajor, info.devminor = entry.devmajor, entry.devminor
    headers = dict(info.pax_headers)
    for key, value in sorted(entry.xattrs.items()):
        headers["SCHILY.xattr." + key] = value.decode("utf-8", "surrogateescape")
    info.pax_headers = headers
    return info


def _marker(parent: str, name: str, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(f"{parent}/{name}" if parent else name)
    info.mode = 0o644
    info.uname = info.gname = ""
    _set_mtime(info, mtime)
    return info


def _set_mtime(info: tarfile.TarInfo, ns: int) -> None:
    seconds, fraction = divmod(abs(ns), 1_000_000_000)
    sign = -1 if ns < 0 else 1
    info.mtime = sign * seconds
    if fraction:
        mtime = f"{'-' if ns < 0 else ''}{seconds}.{fraction:09d}"
        info.pax_headers = {**info.pax_headers, "mtime": mtime}


def write_layer(
    content: ContentStore,
    fs_dir: Path,
    entries: Iterable[Entry],
    *,
    compression: Compression,
    media_type: str,
    labels: Mapping[str, str] | None = None,
    on_writing: Callable[[Meter], None] | None = None,
) -> LayerBlob:
    """Write the layer tar, compressed, as a committed blob of ``content`` and return it.

    The compressed stream is spooled to a file in the store's ingest area while both digests
    are computed; then it goes through a content ``Writer`` for the usual verification and
    atomic commit (a blob already there is fine). Blocking: run it in a thread.
    """
    with content.ingests.spool() as spool:
        compressed = HashingWriter(cast(BinaryIO, spool))
        compressor = compress_writer(compression, cast(BinaryIO, compressed))
        uncompressed = HashingWriter(compressor)
        if on_writing is not None:
            on_writing(uncompressed)  # its count grows as the tar is written
        write_tar(fs_dir, entries, cast(BinaryIO, uncompressed))
        compressor.close()
        desc = Descriptor(media_type, compressed.digest(), compressed.size)
        spool.seek(0)
        store_blob(content, desc, cast(BinaryIO, spool), labels or {})
    return LayerBlob(desc, uncompressed.digest(), uncompressed.size)


def store_blob(
    content: ContentStore, desc: Descriptor, data: BinaryIO, labels: Mapping[str, str]
) -> None:
    if content.exists(desc.digest):
        content.update_labels(desc.digest, labels)
        return
    writer = content.writer(f"fsnap-diff-{desc.digest}", desc)
    try:
        data.seek(writer.offset)  # an earlier, interrupted ingest of this ref resumes
        while chunk := data.read(_COPY):
            writer.write(chunk)
        writer.commit(labels)
    except AlreadyExists:
        content.update_labels(desc.digest, labels)
    finally:
        writer.close()
