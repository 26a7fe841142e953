"""``fsnap export``: images out of the content store as archives other tools read.

- ``oci-dir`` / ``oci-archive``: an OCI image layout (``oci-layout``, ``index.json``,
  ``blobs/sha256/...``), as a directory or a tar of one; what ``skopeo copy oci:`` /
  ``oci-archive:``, ``ctr image import`` and ``podman load`` read. Each image is one entry
  of ``index.json`` named by both ``io.containerd.image.name`` (the full reference, as
  containerd writes it) and ``org.opencontainers.image.ref.name`` (the tag).
- ``docker-archive``: ``docker save``'s layout (``manifest.json``, ``repositories``, the
  config as ``<hex>.json`` and each layer uncompressed as ``<diff_id hex>/layer.tar``), one
  platform per image (this host's, else the only one in the store). ``RepoTags`` hold
  ``repo:tag`` only, as docker writes them: the archive's manifests are remade on load, so
  a digest in a name could never match; an image named by digest alone gets none.
- ``--rootfs``: the image's merged root file system as one tar (``docker export``),
  built from the layer indexes, so owners, devices and xattrs are right even after an
  unprivileged pull; hard links stay links.

An index whose children are not all in the store (one platform pulled) is exported with
the children that are, under a new index. Files are written beside their final name and
renamed into place, so a failed export leaves no partial archive.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

from fsnap import oci
from fsnap.archive.compression import open_uncompressed
from fsnap.content.store import ContentStore
from fsnap.errors import AlreadyExists, InvalidArgument, NotFound
from fsnap.images.store import ImageStore
from fsnap.mount.tree import MergedTree, Node
from fsnap.reference import Reference
from fsnap.transfer.sources import CONTAINERD_NAME, REF_NAME

FORMATS = ("oci-archive", "oci-dir", "docker-archive")
LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'
CHUNK = 1 << 20


@dataclass
class _Layout:
    """What goes into an OCI layout: blobs from the store, documents made here."""

    digests: list[str] = field(default_factory=list)
    made: dict[str, bytes] = field(default_factory=dict)
    manifests: list[dict[str, Any]] = field(default_factory=list)

    def add(self, digest: str) -> None:
        if digest not in self.digests:
            self.digests.append(digest)


def export_images(
    content: ContentStore, images: ImageStore, refs: Sequence[str], out: Path, fmt: str
) -> None:
    if fmt not in FORMATS:
        raise InvalidArgument(f"unknown format {fmt!r} (use {', '.join(FORMATS)})")
    named = [(Reference.parse(ref), _image(images, ref)) for ref in refs]
    if fmt == "docker-archive":
        _write_docker(content, named, out)
        return
    layout = _Layout()
    for ref, target in named:
        desc = _closure(content, target, layout)
        entry = desc.to_json()
        entry["annotations"] = {CONTAINERD_NAME: str(ref), REF_NAME: ref.tag or ref.digest}
        layout.manifests.append(entry)
    if fmt == "oci-dir":
        _write_oci_dir(content, layout, out)
    else:
        with _replacing(out) as stream, tarfile.open(fileobj=stream, mode="w") as tar:
            for name, data in _oci_files(layout):
                _add_bytes(tar, name, data)
            for digest in layout.digests:
                with content.open(digest) as blob:
                    _add_stream(tar, _blob_name(digest), blob, content.info(digest).size)


def _image(images: ImageStore, ref: str) -> oci.Descriptor:
    try:
        return images.get(str(Reference.parse(ref))).target
    except NotFound:
        raise NotFound(f"image {ref} not found") from None


def _closure(content: ContentStore, desc: oci.Descriptor, layout: _Layout) -> oci.Descriptor:
    """Add ``desc`` and everything below it to ``layout``; return the descriptor to name
    (a new index when only some children of an index are in the store)."""
    doc = json.loads(_read(content, desc.digest))
    if desc.media_type in oci.INDEX_TYPES or "manifests" in doc:
        present = [m for m in doc.get("manifests", []) if content.exists(m["digest"])]
        if not present:
            raise NotFound(f"no manifest of index {desc.digest} is in the store")
        for child in present:
            _closure(content, oci.Descriptor.from_json(child), layout)
        if len(present) == len(doc["manifests"]):
            layout.add(desc.digest)
            return desc
        data = json.dumps({**doc, "manifests": present}, separators=(",", ":")).encode()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        layout.made[digest] = data
        return oci.Descriptor(desc.media_type, digest, len(data))
    for blob in [doc["config"], *doc.get("layers", [])]:
        if not content.exists(blob["digest"]):
            raise NotFound(
                f"blob {blob['digest']} of manifest {desc.digest} is not in the store "
                "(a foreign layer, or removed by gc?)"
            )
        layout.add(blob["digest"])
    layout.add(desc.digest)
    return desc


def _read(content: ContentStore, digest: str) -> bytes:
    try:
        return content.read(digest)
    except NotFound:
        raise NotFound(f"blob {digest} is not in the store") from None


def _oci_files(layout: _Layout) -> Iterator[tuple[str, bytes]]:
    yield "oci-layout", LAYOUT
    index = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": layout.manifests}
    yield "index.json", json.dumps(index, indent=2).encode()
    for digest, data in layout.made.items():
        yield _blob_name(digest), data


def _blob_name(digest: str) -> str:
    algorithm, _, hexdigest = digest.partition(":")
    return f"blobs/{algorithm}/{hexdigest}"


def _write_oci_dir(content: ContentStore, layout: _Layout, out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AlreadyExists(f"{out} exists and is not an empty directory")
    with _naming(out):
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name, data in _oci_files(layout):
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_bytes(data)
        for digest in layout.digests:
            target = staging / _blob_name(digest)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(content.path(digest), target)
        staging.chmod(0o755)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# -- docker save ------------------------------------------------------------------------------


def _write_docker(
    content: ContentStore, named: list[tuple[Reference, oci.Descriptor]], out: Path
) -> None:
    entries: list[dict[str, Any]] = []
    repositories: dict[str, dict[str, str]] = {}
    written: set[str] = set()
    with _replacing(out) as stream, tarfile.open(fileobj=stream, mode="w") as tar:
        for ref, target in named:
            manifest = _one_manifest(content, target)
            config_digest = manifest["config"]["digest"]
            config = json.loads(_read(content, config_digest))
            diff_ids = config.get("rootfs", {}).get("diff_ids", [])
            if len(diff_ids) != len(manifest.get("layers", [])):
                raise InvalidArgument(f"{ref}: config and manifest disagree on the layer count")
            config_name = config_digest.partition(":")[2] + ".json"
            if config_name not in written:
                _add_bytes(tar, config_name, _read(content, config_digest))
                written.add(config_name)
            layer_names = []
            for layer, diff_id in zip(manifest["layers"], diff_ids, strict=True):
                name = diff_id.partition(":")[2] + "/layer.tar"
                if name not in written:
                    _add_uncompressed(tar, content, layer, name)
                    written.add(name)
                layer_names.append(name)
            tags = [Reference(ref.domain, ref.path, ref.tag).familiar] if ref.tag else []
            entries.append({"Config": config_name, "RepoTags": tags, "Layers": layer_names})
            if ref.tag and layer_names:
                repo = Reference(ref.domain, ref.path).familiar
                repositories.setdefault(repo, {})[ref.tag] = layer_names[-1].partition("/")[0]
        _add_bytes(tar, "manifest.json", json.dumps(entries).encode())
        _add_bytes(tar, "repositories", json.dumps(repositories).encode())


def _one_manifest(content: ContentStore, desc: oci.Descriptor) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(_read(content, desc.digest))
    if desc.media_type not in oci.INDEX_TYPES and "manifests" not in doc:
        return doc
    present = [m for m in doc.get("manifests", []) if content.exists(m["digest"])]
    host = oci.Platform.host()
    for child in present:
        child_desc = oci.Descriptor.from_json(child)
        if child_desc.platform is None or child_desc.platform.matches(host):
            return _one_manifest(content, child_desc)
    if len(present) == 1:
        return _one_manifest(content, oci.Descriptor.from_json(present[0]))
    raise NotFound(f"index {desc.digest}: no manifest for {host} in the store")


def _add_uncompressed(
    tar: tarfile.TarFile, content: ContentStore, layer: dict[str, Any], name: str
) -> None:
    """The layer's tar, decompressed (docker archives hold uncompressed layers)."""
    with content.ingests.spool() as spool:
        with content.open(layer["digest"]) as blob:
            raw = cast(BinaryIO, blob)
            shutil.copyfileobj(open_uncompressed(raw, layer.get("mediaType", "")), spool, CHUNK)
        size = spool.tell()
        spool.seek(0)
        _add_stream(tar, name, spool, size)


# -- merged root file system ------------------------------------------------------------------


def export_rootfs(tree: MergedTree, out: Path) -> None:
    """The merged tree as one tar: metadata from the indexes, data from the layers."""
    with (
        _replacing(out) as stream,
        tarfile.open(
            fileobj=stream,
            mode="w",
            format=tarfile.PAX_FORMAT,
            encoding="utf-8",
            errors="surrogateescape",
        ) as tar,
    ):
        first: dict[int, str] = {}
        for raw_path, node in sorted(tree.walk(), key=lambda item: item[0].split(b"/")):
            path = os.fsdecode(raw_path)
            info = _rootfs_info(path, node)
            if node.source is not None and id(node) in first:
                info.type, info.linkname, info.size = tarfile.LNKTYPE, first[id(node)], 0
                tar.addfile(info)
            elif node.source is not None:
                first[id(node)] = path
                with open(node.source, "rb") as data:
                    info.size = os.fstat(data.fileno()).st_size
                    tar.addfile(info, data)
            else:
                tar.addfile(info)


_KINDS = {
    0o040000: tarfile.DIRTYPE,
    0o120000: tarfile.SYMTYPE,
    0o020000: tarfile.CHRTYPE,
    0o060000: tarfile.BLKTYPE,
    0o010000: tarfile.FIFOTYPE,
}


def _rootfs_info(path: str, node: Node) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path + "/" if node.is_dir else path)
    info.type = _KINDS.get(node.mode & 0o170000, tarfile.REGTYPE)
    info.mode = 0o777 if info.type == tarfile.SYMTYPE else node.mode & 0o7777
    info.uid, info.gid = node.uid, node.gid
    info.uname = info.gname = ""
    info.mtime = node.mtime // 1_000_000_000
    if node.link is not None:
        info.linkname = os.fsdecode(node.link)
    if info.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = os.major(node.rdev), os.minor(node.rdev)
    if node.xattrs:
        info.pax_headers = {
            "SCHILY.xattr." + os.fsdecode(k): v.decode("utf-8", "surrogateescape")
            for k, v in node.xattrs.items()
        }
    return info


# -- writing ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _replacing(out: Path) -> Iterator[IO[bytes]]:
    """A file beside ``out`` that becomes ``out`` when the block succeeds. A device or FIFO
    (``-o /dev/stdout``, ``-o /dev/null``, a named pipe) is written to as it is, as
    ``docker save -o`` does: renaming over it replaced the device node with a file."""
    if out.is_dir():
        raise AlreadyExists(f"{out} is a directory")
    if _special(out):
        with open(out, "wb", buffering=0) as raw:
            yield cast(IO[bytes], _Counted(raw))
        return
    with _naming(out):
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class _Counted(io.RawIOBase):
    """A pipe or device as ``tarfile`` writes to a file: ``tell`` counts the bytes written
    (a pipe cannot seek), every write is written whole."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            done += self.raw.write(view[done:]) or 0
        self.written += done
        return done

    def tell(self) -> int:
        return self.written


def _special(out: Path) -> bool:
    """True when ``out`` (followed, as ``/dev/stdout`` is a link) exists and is neither a
    regular file nor a directory. A link into ``/proc`` to a regular file (``-o
    /dev/stdout`` redirected to a file) is refused: renaming over it replaced the system's
    ``/dev/stdout`` link, and writing through it would share the file with our own
    output."""
    try:
        mode = os.stat(out).st_mode
    except OSError:
        return False
    if not stat.S_ISREG(mode):
        return not stat.S_ISDIR(mode)
    if _into_proc(out):
        raise InvalidArgument(f"{out} is a process's file descriptor: give the file's own path")
    return False


def _into_proc(out: Path) -> bool:
    path = str(out)
    for _ in range(40):
        if path.startswith("/proc/"):
            return True
        if not os.path.islink(path):
            return False
        path = os.path.join(os.path.dirname(path), os.readlink(path))
    return False


@contextlib.contextmanager
def _naming(out: Path) -> Iterator[None]:
    """Creating the staging file or directory beside ``out``: a failure names ``out``, the
    path the user gave (the staging name is ours), and a missing directory says so."""
    try:
        yield
    except FileNotFoundError:
        raise NotFound(f"cannot write {out}: no directory {out.parent}") from None
    except NotADirectoryError:
        raise NotFound(f"cannot write {out}: {out.parent} is not a directory") from None
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write {out}: {exc.strerror}") from None


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    _add_stream(tar, name, io.BytesIO(data), len(data))


def _add_stream(tar: tarfile.TarFile, name: str, stream: IO[bytes], size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = size, 0o644
    tar.addfile(info, stream)
