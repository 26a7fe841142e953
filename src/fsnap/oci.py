"""OCI / Docker media types, descriptors and platforms: the vocabulary of every other package."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fsnap.errors import InvalidArgument

# Manifests and indexes.
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

# Configs.
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

# Layers.
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
OCI_LAYER_NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
SCHEMA1_TYPES = frozenset({DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})
CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})
LAYER_TYPES = frozenset(
    {
        OCI_LAYER,
        OCI_LAYER_GZIP,
        OCI_LAYER_ZSTD,
        DOCKER_LAYER_GZIP,
        DOCKER_LAYER,
        OCI_LAYER_NONDIST,
        OCI_LAYER_NONDIST_GZIP,
        DOCKER_FOREIGN_LAYER,
    }
)

# What we send as Accept when resolving a reference.
MANIFEST_ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST])

# A manifest or index larger than this is refused (containerd uses 4 MiB too).
MAX_MANIFEST_SIZE = 4 * 1024 * 1024


@dataclass(frozen=True)
class Platform:
    """An OCI platform: ``os/architecture[/variant]``."""

    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise InvalidArgument(f"invalid platform {text!r}: expected os/arch[/variant]")
        os_, arch = parts[0], normalize_arch(parts[1])
        variant = parts[2] if len(parts) == 3 else ""
        return cls(os_, arch, variant)

    @classmethod
    def host(cls) -> Platform:
        machine = os.uname().machine
        arch = normalize_arch(machine)
        variant = "v8" if arch == "arm64" else ""
        return cls("linux", arch, variant)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Platform:
        return cls(
            str(data.get("os", "")),
            normalize_arch(str(data.get("architecture", ""))),
            str(data.get("variant", "")),
        )

    def to_json(self) -> dict[str, str]:
        out = {"os": self.os, "architecture": self.architecture}
        if self.variant:
            out["variant"] = self.variant
        return out

    def matches(self, other: Platform) -> bool:
        """True when an image built for ``other`` runs here (variant is optional on either side)."""
        if self.os != other.os or self.architecture != other.architecture:
            return False
        return not (self.variant and other.variant and self.variant != other.variant)

    def __str__(self) -> str:
        base = f"{self.os}/{self.architecture}"
        return f"{base}/{self.variant}" if self.variant else base


def _all_str(values: Iterable[object]) -> bool:
    return all(isinstance(value, str) for value in values)


def normalize_arch(arch: str) -> str:
    return {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "armhf": "arm"}.get(
        arch, arch
    )


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: what a blob is, how big, and its digest."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    platform: Platform | None = field(default=None, compare=False, hash=False)
    urls: tuple[str, ...] = field(default=(), compare=False, hash=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Descriptor:
        try:
            media_type = str(data.get("mediaType", ""))
            digest = str(data["digest"])
            size = int(data["size"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"malformed descriptor {data!r}: {exc}") from None
        if size < 0:
            raise InvalidArgument(f"descriptor {digest} has a negative size")
        from fsnap.digest import validate

        validate(digest)
        plat = data.get("platform")
        annotations = data.get("annotations") or {}
        urls = data.get("urls") or []
        if not isinstance(annotations, dict) or not _all_str(annotations.values()):
            raise InvalidArgument(f"descriptor {digest}: annotations must map strings to strings")
        if not isinstance(urls, list) or not _all_str(urls):
            raise InvalidArgument(f"descriptor {digest}: urls must be a list of strings")
        return cls(
            media_type=media_type,
            digest=digest,
            size=size,
            annotations=dict(annotations),
            platform=Platform.from_json(plat) if isinstance(plat, dict) else None,
            urls=tuple(urls),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        if self.urls:
            out["urls"] = list(self.urls)
        return out
