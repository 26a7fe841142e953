"""Build OCI / Docker images in memory for tests: layer tars, configs, manifests, indexes.

Everything is deterministic (fixed mtimes, gzip without timestamps) so digests are stable
within a run, and every builder returns the bytes *and* the digests a test wants to assert
on (blob digests, diff IDs, chain IDs).
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import zstandard

from fsnap import oci
from fsnap.digest import chain_id, chain_ids, sha256_of

Compression = Literal["gzip", "zstd", "none"]
Format = Literal["oci", "docker"]

MTIME = 1_700_000_000
AMD64 = oci.Platform("linux", "amd64")
ARM64 = oci.Platform("linux", "arm64")
BUSYBOX = Path("/bin/busybox")
BUSYBOX_APPLETS = ("sh", "ls", "cat", "echo", "true", "false", "id", "env", "stat", "mkdir", "rm")

# A file's content (str is UTF-8 encoded); a path ending in "/" is a directory.
FileTree = Mapping[str, bytes | str]
TarMembers = Sequence[tuple[tarfile.TarInfo, bytes | None]]


@dataclass(frozen=True)
class Blob:
    """Bytes with a media type: anything a registry stores."""

    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return sha256_of(self.data)

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self, platform: oci.Platform | None = None) -> oci.Descriptor:
        return oci.Descriptor(self.media_type, self.digest, self.size, platform=platform)


@dataclass(frozen=True)
class Layer:
    """A layer blob (possibly compressed) and the uncompressed tar it came from."""

    blob: Blob
    tar: bytes

    @property
    def diff_id(self) -> str:
        return sha256_of(self.tar)


@dataclass(frozen=True)
class Image:
    """A single-platform image: manifest, config and layers."""

    manifest: Blob
    config: Blob
    layers: tuple[Layer, ...]
    platform: oci.Platform

    @property
    def diff_ids(self) -> list[str]:
        return [layer.diff_id for layer in self.layers]

    @property
    def chain_ids(self) -> list[str]:
        return chain_ids(self.diff_ids)

    @property
    def chain_id(self) -> str:
        """The chain ID of the top layer: the snapshot an unpacked image ends in."""
        return chain_id(self.diff_ids)

    @property
    def blobs(self) -> list[Blob]:
        return [layer.blob for layer in self.layers] + [self.config]


@dataclass(frozen=True)
class ImageIndex:
    """A multi-platform index (OCI index or Docker manifest list) over ``images``."""

    index: Blob
    images: tuple[Image, ...]

    def for_platform(self, platform: oci.Platform) -> Image:
        return next(i for i in self.images if i.platform == platform)


def tar_bytes(content: FileTree | TarMembers) -> bytes:
    """An uncompressed tar of ``content``: a path -> bytes mapping or (TarInfo, data) pairs."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        members = _members(content) if isinstance(content, Mapping) else content
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def _members(files: FileTree) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    for path, value in files.items():
        if path.endswith("/"):
            members.append((tar_info(path.rstrip("/"), tarfile.DIRTYPE, mode=0o755), None))
        else:
            data = value.encode() if isinstance(value, str) else value
            members.append((tar_info(path, size=len(data)), data))
    return members


def tar_info(
    name: str,
    kind: bytes = tarfile.REGTYPE,
    *,
    mode: int = 0o644,
    size: int = 0,
    linkname: str = "",
    uid: int = 0,
    gid: int = 0,
) -> tarfile.TarInfo:
    """A TarInfo with test defaults (root-owned, fixed mtime)."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.linkname = linkname
    info.uid, info.gid = uid, gid
    info.mtime = MTIME
    return info


def compress(data: bytes, compression: Compression) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


def layer_media_type(compression: Compression, fmt: Format = "oci") -> str:
    if fmt == "docker" and compression == "gzip":
        return oci.DOCKER_LAYER_GZIP
    if fmt == "docker" and compression == "none":
        return oci.DOCKER_LAYER
    return {"gzip": oci.OCI_LAYER_GZIP, "zstd": oci.OCI_LAYER_ZSTD, "none": oci.OCI_LAYER}[
        compression
    ]


def make_layer(
    content: FileTree | TarMembers, compression: Compression = "gzip", fmt: Format = "oci"
) -> Layer:
    tar = tar_bytes(content)
    return Layer(Blob(layer_media_type(compression, fmt), compress(tar, compression)), tar)


def make_image(
    layers: Sequence[Layer],
    *,
    fmt: Format = "oci",
    platform: oci.Platform = AMD64,
    config: Mapping[str, Any] | None = None,
    history: Sequence[str] | None = None,
) -> Image:
    """Config and manifest for ``layers`` (bottom first); ``config`` is the runtime config;
    ``history`` the ``created_by`` of each layer (default ``test layer N``)."""
    config_json = {
        "architecture": platform.architecture,
        "os": platform.os,
        **({"variant": platform.variant} if platform.variant else {}),
        "config": dict(config or {"Cmd": ["/bin/sh"]}),
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [
            {"created_by": history[i] if history else f"test layer {i}"} for i in range(len(layers))
        ],
    }
    config_type = oci.OCI_CONFIG if fmt == "oci" else oci.DOCKER_CONFIG
    config_blob = Blob(config_type, _json(config_json))
    manifest_type = oci.OCI_MANIFEST if fmt == "oci" else oci.DOCKER_MANIFEST
    manifest = {
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": config_blob.descriptor().to_json(),
        "layers": [layer.blob.descriptor().to_json() for layer in layers],
    }
    return Image(Blob(manifest_type, _json(manifest)), config_blob, tuple(layers), platform)


def make_index(images: Sequence[Image], fmt: Format = "oci") -> ImageIndex:
    media_type = oci.OCI_INDEX if fmt == "oci" else oci.DOCKER_MANIFEST_LIST
    index = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [i.manifest.descriptor(platform=i.platform).to_json() for i in images],
    }
    return ImageIndex(Blob(media_type, _json(index)), tuple(images))


def two_platform_index(fmt: Format = "oci", compression: Compression = "gzip") -> ImageIndex:
    """linux/amd64 and linux/arm64 sharing a base layer, each with its own top layer."""
    base = make_layer({"etc/": b"", "etc/os-release": "NAME=fsnap-test\n"}, compression, fmt)
    images = [
        make_image(
            [base, make_layer({"etc/arch": f"{p.architecture}\n"}, compression, fmt)],
            fmt=fmt,
            platform=p,
        )
        for p in (AMD64, ARM64)
    ]
    return make_index(images, fmt)


def busybox_members(links: Literal["symlink", "hardlink"] = "symlink") -> TarMembers:
    """A minimal root: /bin/busybox (Debian busybox-static) with applets linked to it."""
    data = BUSYBOX.read_bytes()
    members: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (tar_info(d, tarfile.DIRTYPE, mode=0o755), None)
        for d in ("bin", "etc", "tmp", "proc", "dev", "root")
    ]
    members[2][0].mode = 0o1777
    members.append((tar_info("bin/busybox", mode=0o755, size=len(data)), data))
    for applet in BUSYBOX_APPLETS:
        if links == "symlink":
            members.append((tar_info(f"bin/{applet}", tarfile.SYMTYPE, linkname="busybox"), None))
        else:
            info = tar_info(f"bin/{applet}", tarfile.LNKTYPE, mode=0o755, linkname="bin/busybox")
            members.append((info, None))
    members.append((tar_info("etc/passwd", size=30), b"root:x:0:0:root:/root:/bin/sh\n"))
    return members


def busybox_image(
    *,
    links: Literal["symlink", "hardlink"] = "symlink",
    compression: Compression = "gzip",
    fmt: Format = "oci",
) -> Image:
    """A one-layer image that runs: ``chroot ROOTFS /bin/sh -c ...`` works on it."""
    layer = make_layer(busybox_members(links), compression, fmt)
    return make_image([layer], fmt=fmt, config={"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]})


def _json(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, indent=2, sort_keys=True).encode()


__all__ = [
    "AMD64",
    "ARM64",
    "Blob",
    "Image",
    "ImageIndex",
    "Layer",
    "busybox_image",
    "busybox_members",
    "compress",
    "make_image",
    "make_index",
    "make_layer",
    "tar_bytes",
    "tar_info",
    "two_platform_index",
]
