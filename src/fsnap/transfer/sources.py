"""Image archives read as hostile input: an OCI layout (directory or tar) or a ``docker save``
tar, presented as named image descriptors plus blobs by digest.

A ``docker save`` from before docker 1.10 has only ``repositories`` and one directory per
layer: its config is made from the top layer's ``json`` and the layers' DiffIDs.

Every format ends as the same ``Source``: ``images`` (name or None, descriptor of an index
or manifest) and ``open(digest)`` for any blob. A ``docker save`` archive has no manifests
of its own, so one OCI manifest per image is made from its ``manifest.json`` (config and
layer files hashed as found; the layer media type follows the bytes' magic).

Limits and checks: tar members must be files, directories or links with relative names
inside the archive (no ``..``, no absolute paths; a link is an alias of another member and
must name one inside the archive; devices and fifos are refused: such an archive is
refused, not half-read), at most ``MAX_MEMBERS`` of them, no duplicate names; directory
layouts are read through directory descriptors with ``O_NOFOLLOW`` on every component, so
a symlink anywhere on a blob's path is refused; JSON documents are size-capped before they
are read. Digests are not trusted here: the content writer verifies every blob it stores.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

from fsnap import oci
from fsnap.archive.compression import GZIP_MAGIC, ZSTD_MAGIC, open_uncompressed
from fsnap.errors import InvalidArgument, NotFound

MAX_MEMBERS = 100_000
MAX_LINK_HOPS = 8
MAX_LEGACY_LAYERS = 256
MAX_JSON = oci.MAX_MANIFEST_SIZE
LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
DOCKER_MANIFEST_FILE = "manifest.json"
REPOSITORIES_FILE = "repositories"
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
_CHUNK = 1 << 20

Opener = Callable[[], IO[bytes]]


@dataclass
class Source:
    """Images and blobs of one archive. ``images``: (name or None, descriptor)."""

    images: list[tuple[str | None, oci.Descriptor]] = field(default_factory=list)
    blobs: dict[str, Opener] = field(default_factory=dict)
    # Documents made up for a docker archive (the manifests it does not have).
    made: dict[str, bytes] = field(default_factory=dict)
    closers: list[Callable[[], None]] = field(default_factory=list)

    def open(self, digest: str) -> IO[bytes]:
        if digest in self.made:
            return io.BytesIO(self.made[digest])
        opener = self.blobs.get(digest)
        if opener is None:
            raise NotFound(f"blob {digest} is missing from the archive")
        return opener()

    def read_document(self, digest: str) -> bytes:
        with self.open(digest) as stream:
            data = stream.read(MAX_JSON + 1)
        if len(data) > MAX_JSON:
            raise InvalidArgument(f"document {digest} in the archive is larger than {MAX_JSON}")
        return data

    def close(self) -> None:
        for close in reversed(self.closers):
            close()


def open_source(path: Path) -> Source:
    """The archive at ``path``: an OCI layout directory, or a tar (OCI or docker save).
    A pipe, device or socket is refused before it is opened: the tar's members are read
    by seeking, and opening a FIFO nobody writes to would wait for good."""
    given = path
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            st = os.stat(given)  # (a pipe's /dev/stdin has no real path to stat)
            path = Path(os.path.realpath(path))  # the argument may be a link, as with tar
    except FileNotFoundError:
        raise NotFound(f"{given}: no such file or directory") from None
    if stat.S_ISDIR(st.st_mode):
        return _oci_source(_DirFiles(path), str(path))
    if not stat.S_ISREG(st.st_mode):
        raise InvalidArgument(
            f"{given}: not a file or directory (a pipe or device?): fsnap import reads an "
            "archive file or an OCI layout directory"
        )
    files = _TarFiles(path)
    try:
        if files.exists(LAYOUT_FILE) and files.exists(INDEX_FILE):
            return _oci_source(files, str(path))
        if files.exists(DOCKER_MANIFEST_FILE):
            return _docker_source(files, str(path))
        if files.exists(REPOSITORIES_FILE):
            return _legacy_docker_source(files, str(path))
        raise InvalidArgument(f"{path}: neither an OCI layout nor a docker archive")
    except BaseException:
        files.close()
        raise


# -- files inside an archive ------------------------------------------------------------------


class _Files:
    name = ""

    def exists(self, member: str) -> bool:
        raise NotImplementedError

    def opener(self, member: str) -> Opener:
        raise NotImplementedError

    def read_json(self, member: str) -> Any:
        with self.opener(member)() as stream:
            data = stream.read(MAX_JSON + 1)
        if len(data) > MAX_JSON:
            raise InvalidArgument(f"{self.name}: {member} is larger than {MAX_JSON} bytes")
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidArgument(f"{self.name}: {member} is not valid JSON: {exc}") from None
        except RecursionError:  # "[[[[..." deeper than the parser's stack
            raise InvalidArgument(f"{self.name}: {member} is nested too deeply") from None

    def close(self) -> None:
        pass


def _clean_member(name: str, archive: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or ".." in parts or not parts:
        raise InvalidArgument(f"{archive}: member {name!r} points outside the archive")
    return "/".join(parts)


class _TarFiles(_Files):
    """Members of a tar (read once, headers only, then opened on demand)."""

    def __init__(self, path: Path) -> None:
        self.name = str(path)
        self.path = path
        try:
            self.tar = tarfile.open(path, mode="r:")  # noqa: SIM115 (closed by close())
        except (tarfile.TarError, OSError) as exc:
            raise InvalidArgument(f"{path}: not a readable tar archive: {exc}") from None
        self.members: dict[str, tarfile.TarInfo] = {}
        self.aliases: dict[str, str] = {}
        # Hashes by (resolved member, what): each member is read once, however many
        # manifest entries, layer lists or legacy chains name it.
        self.hashes: dict[tuple[str, str], Any] = {}
        try:
            self._index()
        except BaseException:
            self.tar.close()
            raise

    def _index(self) -> None:
        try:
            for count, member in enumerate(self.tar, 1):
                if count > MAX_MEMBERS:
                    raise InvalidArgument(f"{self.name}: more than {MAX_MEMBERS} members")
                name = _clean_member(member.name, self.name)
                if member.isdir():
                    continue
                if name in self.members or name in self.aliases:
                    raise InvalidArgument(f"{self.name}: member {name!r} appears twice")
                if member.issym() or member.islnk():
                    self.aliases[name] = self._link_target(name, member)
                elif member.isfile() and not member.issparse():
                    self.members[name] = member
                else:
                    raise InvalidArgument(
                        f"{self.name}: member {member.name!r} is a device or fifo; image "
                        "archives hold only files"
                    )
        except tarfile.TarError as exc:
            raise InvalidArgument(f"{self.name}: corrupt tar archive: {exc}") from None

    def _link_target(self, name: str, member: tarfile.TarInfo) -> str:
        """The member a link names (docker and skopeo link legacy layer paths to layer
        files), which must be inside the archive."""
        if member.issym():
            if member.linkname.startswith("/"):
                raise InvalidArgument(
                    f"{self.name}: link {name!r} points outside the archive ({member.linkname})"
                )
            target = os.path.normpath(os.path.join(os.path.dirname(name), member.linkname))
        else:
            target = member.linkname
        if target.startswith("../") or target == "..":
            raise InvalidArgument(
                f"{self.name}: link {name!r} points outside the archive ({member.linkname})"
            )
        return _clean_member(target, self.name)

    def _resolve(self, member: str) -> str:
        for _ in range(MAX_LINK_HOPS):
            if member not in self.aliases:
                return member
            member = self.aliases[member]
        raise InvalidArgument(f"{self.name}: too many levels of links at {member!r}")

    def exists(self, member: str) -> bool:
        return self._resolve(member) in self.members

    def opener(self, member: str) -> Opener:
        info = self.members.get(self._resolve(member))
        if info is None:
            raise NotFound(f"{self.name}: {member} is missing from the archive")

        def open_member() -> IO[bytes]:
            # Its own file object (concurrent downloads read members in several threads;
            # tarfile's shared one would interleave their seeks).
            raw = open(self.path, "rb")  # noqa: SIM115 (the caller closes the slice)
            raw.seek(info.offset_data)
            return cast(IO[bytes], _Slice(raw, info.size))

        return open_member

    def close(self) -> None:
        self.tar.close()


class _Slice(io.RawIOBase):
    """``size`` bytes of ``raw`` from where it stands (one tar member's data)."""

    def __init__(self, raw: IO[bytes], size: int) -> None:
        self.raw = raw
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        view = memoryview(b)[: self.left]
        got = self.raw.readinto(view)  # type: ignore[attr-defined]
        self.left -= got
        return int(got)

    def close(self) -> None:
        self.raw.close()
        super().close()


class _DirFiles(_Files):
    """Files below a directory, opened one component at a time without following links."""

    def __init__(self, root: Path) -> None:
        self.name = str(root)
        self.root = root

    def _open(self, member: str) -> int:
        """A descriptor of the regular file ``member``. The last open does not block
        (``O_NONBLOCK``: a FIFO would wait for a writer for good), and anything but a
        regular file is refused before it is read."""
        parts = _clean_member(member, self.name).split("/")
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.root, flags | os.O_DIRECTORY)
        try:
            for part in parts[:-1]:
                next_fd = os.open(part, flags | os.O_DIRECTORY, dir_fd=fd)
                os.close(fd)
                fd = next_fd
            fd_file = os.open(parts[-1], flags | os.O_NONBLOCK, dir_fd=fd)
            return _regular(fd_file, f"{self.name}: {member}")
        except FileNotFoundError:
            raise NotFound(f"{self.name}: {member} is missing") from None
        except OSError as exc:
            raise InvalidArgument(f"{self.name}: cannot open {member} (a link?): {exc}") from None
        finally:
            os.close(fd)

    def exists(self, member: str) -> bool:
        try:
            os.close(self._open(member))
        except NotFound:
            return False
        return True

    def opener(self, member: str) -> Opener:
        def open_file() -> IO[bytes]:
            return os.fdopen(self._open(member), "rb")

        return open_file


def _regular(fd: int, where: str) -> int:
    """``fd`` when it is a regular file; else it is closed and ``where`` refused."""
    if stat.S_ISREG(os.fstat(fd).st_mode):
        return fd
    os.close(fd)
    raise InvalidArgument(f"{where} is not a regular file")


# -- OCI image layout -------------------------------------------------------------------------


def _oci_source(files: _Files, where: str) -> Source:
    layout = files.read_json(LAYOUT_FILE)
    if not isinstance(layout, dict) or "imageLayoutVersion" not in layout:
        raise InvalidArgument(f"{where}: {LAYOUT_FILE} has no imageLayoutVersion")
    index = files.read_json(INDEX_FILE)
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list):
        raise InvalidArgument(f"{where}: {INDEX_FILE} lists no manifests")
    source = Source(closers=[files.close])
    for raw in manifests:
        if not isinstance(raw, dict):
            raise InvalidArgument(f"{where}: bad descriptor in {INDEX_FILE}: {raw!r:.80}")
        try:
            desc = oci.Descriptor.from_json(raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"{where}: bad descriptor in {INDEX_FILE}: {exc}") from None
        annotations = raw.get("annotations") or {}
        name = annotations.get(CONTAINERD_NAME) or annotations.get(REF_NAME)
        if name and annotations.get(CONTAINERD_NAME) is None and _bare_tag(str(name)):
            name = None  # the OCI annotation often holds only a tag: the user names it
        source.images.append((str(name) if name else None, desc))
    for member in _blob_members(files):
        algorithm, hexdigest = member.split("/")[1:3]
        source.blobs[f"{algorithm}:{hexdigest}"] = files.opener(member)
    return source


def _bare_tag(name: str) -> bool:
    return "/" not in name and ":" not in name


def _blob_members(files: _Files) -> Iterator[str]:
    if isinstance(files, _TarFiles):
        # A blob may be a link to a file elsewhere in the archive (GNU tar writes a second
        # hard link to one file as a link): it is that file's bytes, read through the alias.
        yield from (m for m in [*files.members, *files.aliases] if _is_blob_path(m))
        return
    assert isinstance(files, _DirFiles)
    blobs = files.root / "blobs"
    if not os.path.isdir(blobs) or os.path.islink(blobs):
        return
    for algorithm in sorted(os.listdir(blobs)):
        if os.path.islink(blobs / algorithm) or not os.path.isdir(blobs / algorithm):
            continue
        for hexdigest in sorted(os.listdir(blobs / algorithm)):
            yield f"blobs/{algorithm}/{hexdigest}"


def _is_blob_path(member: str) -> bool:
    parts = member.split("/")
    return len(parts) == 3 and parts[0] == "blobs"


# -- docker save ------------------------------------------------------------------------------


def _docker_source(files: _TarFiles, where: str) -> Source:
    entries = files.read_json(DOCKER_MANIFEST_FILE)
    if not isinstance(entries, list) or not entries:
        raise InvalidArgument(f"{where}: {DOCKER_MANIFEST_FILE} lists no images")
    source = Source(closers=[files.close])
    for entry in entries:
        if not isinstance(entry, dict) or not _strings(entry.get("Layers")):
            raise InvalidArgument(
                f"{where}: an entry of {DOCKER_MANIFEST_FILE} has no Layers list of strings"
            )
        if not isinstance(entry.get("Config"), str) or not entry["Config"]:
            raise InvalidArgument(f"{where}: an entry of {DOCKER_MANIFEST_FILE} has no Config")
        desc = _docker_manifest(files, entry, source)
        tags = entry.get("RepoTags") or [None]
        if not isinstance(tags, list):
            raise InvalidArgument(f"{where}: RepoTags in {DOCKER_MANIFEST_FILE} is not a list")
        for tag in tags:
            source.images.append((str(tag) if tag else None, desc))
    return source


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _docker_manifest(files: _TarFiles, entry: dict[str, Any], source: Source) -> oci.Descriptor:
    config = _hashed(files, _clean_member(entry["Config"], files.name), source)
    layers = [_hashed(files, _clean_member(name, files.name), source) for name in entry["Layers"]]
    return _made_manifest(config, layers, source)


def _made_manifest(
    config: oci.Descriptor, layers: list[oci.Descriptor], source: Source
) -> oci.Descriptor:
    manifest = {
        "schemaVersion": 2,
        "mediaType": oci.OCI_MANIFEST,
        "config": {"mediaType": oci.OCI_CONFIG, "digest": config.digest, "size": config.size},
        "layers": [layer.to_json() for layer in layers],
    }
    return _made(source, oci.OCI_MANIFEST, json.dumps(manifest, separators=(",", ":")).encode())


def _made(source: Source, media_type: str, data: bytes) -> oci.Descriptor:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    source.made[digest] = data
    return oci.Descriptor(media_type, digest, len(data))


# -- docker save before 1.10: ``repositories`` and one directory per layer ---------------------


def _legacy_docker_source(files: _TarFiles, where: str) -> Source:
    """Images named in ``repositories`` (repo -> tag -> top layer id); each layer directory
    holds ``json`` (``parent``, and on the top one the runtime ``config``) and ``layer.tar``.
    The config is made here: the top's runtime config plus the layers' DiffIDs."""
    repositories = files.read_json(REPOSITORIES_FILE)
    if not isinstance(repositories, dict):
        raise InvalidArgument(f"{where}: {REPOSITORIES_FILE} is not a JSON object")
    source = Source(closers=[files.close])
    made: dict[str, oci.Descriptor] = {}
    for repo, tags in repositories.items():
        if not isinstance(tags, dict):
            raise InvalidArgument(f"{where}: {REPOSITORIES_FILE}: {repo!r} has no tags")
        for tag, top in tags.items():
            if str(top) not in made:
                made[str(top)] = _legacy_manifest(files, str(top), source)
            source.images.append((f"{repo}:{tag}", made[str(top)]))
    return source


def _legacy_manifest(files: _TarFiles, top: str, source: Source) -> oci.Descriptor:
    chain: list[tuple[str, dict[str, Any]]] = []
    layer_id: str | None = top
    while layer_id:
        if len(chain) >= MAX_LEGACY_LAYERS or any(layer_id == seen for seen, _ in chain):
            raise InvalidArgument(f"{files.name}: layer chain of {top} is cyclic or too long")
        if "/" in layer_id or layer_id in ("", ".", ".."):
            raise InvalidArgument(f"{files.name}: bad layer id {layer_id!r}")
        meta = files.read_json(f"{layer_id}/json")
        if not isinstance(meta, dict):
            raise InvalidArgument(f"{files.name}: {layer_id}/json is not a JSON object")
        chain.append((layer_id, meta))
        parent = meta.get("parent")
        layer_id = str(parent) if parent else None
    chain.reverse()
    layers, diff_ids = [], []
    for layer_id, _ in chain:
        member = f"{layer_id}/layer.tar"
        layers.append(_hashed(files, member, source))
        diff_ids.append(_diff_id(files, member))
    config = {
        **_legacy_runtime(files, chain[-1]),
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    config_desc = _made(source, oci.OCI_CONFIG, json.dumps(config, sort_keys=True).encode())
    return _made_manifest(config_desc, layers, source)


def _once(files: _TarFiles, member: str, what: str, compute: Callable[[], Any]) -> Any:
    """``compute()`` for ``member`` the first time, its saved result after: an archive
    naming one large member many times (a manifest.json listing it 100000 times, tags
    sharing a legacy chain) costs one read of it, not one per mention."""
    key = (files._resolve(member), what)
    if key not in files.hashes:
        files.hashes[key] = compute()
    return files.hashes[key]


def _legacy_runtime(files: _TarFiles, top: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    """Platform and runtime config of the image from its top layer's ``json``, checked as
    a registry's config would be: fsnap makes this config, it must not make a malformed one
    (``config: "x"`` imported and then broke every command that reads the config)."""
    layer_id, meta = top
    found = {
        "architecture": meta.get("architecture") or "amd64",
        "os": meta.get("os") or "linux",
        "config": meta.get("config") or {},
    }
    if not isinstance(found["config"], dict):
        raise InvalidArgument(f"{files.name}: {layer_id}/json: config is not a JSON object")
    if not isinstance(found["architecture"], str) or not isinstance(found["os"], str):
        raise InvalidArgument(f"{files.name}: {layer_id}/json: architecture and os are not strings")
    return found


def _diff_id(files: _TarFiles, member: str) -> str:
    """sha256 of the layer's uncompressed bytes (the DiffID a config names)."""
    return str(_once(files, member, "diff_id", lambda: _inflated_digest(files, member)))


def _inflated_digest(files: _TarFiles, member: str) -> str:
    sha = hashlib.sha256()
    with files.opener(member)() as raw:
        stream = open_uncompressed(cast(BinaryIO, raw), oci.OCI_LAYER)
        while chunk := stream.read(_CHUNK):
            sha.update(chunk)
    return "sha256:" + sha.hexdigest()


def _hashed(files: _TarFiles, member: str, source: Source) -> oci.Descriptor:
    """A descriptor for one member (digest and media type from its bytes)."""
    opener = files.opener(member)
    digest, size, head = _once(files, member, "digest", lambda: _digest(opener))
    source.blobs[digest] = opener
    if member.endswith(".json"):
        return oci.Descriptor(oci.OCI_CONFIG, digest, size)
    if head.startswith(GZIP_MAGIC):
        media_type = oci.OCI_LAYER_GZIP
    elif head.startswith(ZSTD_MAGIC):
        media_type = oci.OCI_LAYER_ZSTD
    else:
        media_type = oci.OCI_LAYER
    return oci.Descriptor(media_type, digest, size)


def _digest(opener: Opener) -> tuple[str, int, bytes]:
    """sha256, size and first bytes of one member."""
    sha = hashlib.sha256()
    size = 0
    head = b""
    with opener() as stream:
        while chunk := stream.read(_CHUNK):
            if not head:
                head = chunk[:4]
            sha.update(chunk)
            size += len(chunk)
    return "sha256:" + sha.hexdigest(), size, head


@contextlib.contextmanager
def opened(path: Path) -> Iterator[Source]:
    source = open_source(path)
    try:
        yield source
    finally:
        source.close()
