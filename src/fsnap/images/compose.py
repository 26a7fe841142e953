"""Writing image documents: a config extended by one layer, and the manifest naming it.

``fsnap commit`` makes a new image from a base image plus one layer. The new documents stay
in the base's media-type family (OCI or Docker schema 2) so that whatever consumed the base
consumes the result, and the base config is kept whole (runtime config, labels, history)
except for the fields a new layer changes: ``rootfs.diff_ids``, ``history`` and ``created``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from fsnap import oci
from fsnap.archive.compression import Compression
from fsnap.errors import Unsupported
from fsnap.oci import Descriptor, Platform

HISTORY_CREATED_BY = "fsnap commit"

_LAYER_TYPES = {
    ("oci", Compression.GZIP): oci.OCI_LAYER_GZIP,
    ("oci", Compression.ZSTD): oci.OCI_LAYER_ZSTD,
    ("oci", Compression.NONE): oci.OCI_LAYER,
    ("docker", Compression.GZIP): oci.DOCKER_LAYER_GZIP,
    ("docker", Compression.NONE): oci.DOCKER_LAYER,
}


def family(manifest_media_type: str) -> str:
    """``"docker"`` for a Docker schema 2 manifest, ``"oci"`` for everything else."""
    return "docker" if manifest_media_type == oci.DOCKER_MANIFEST else "oci"


def manifest_type(fam: str) -> str:
    return oci.DOCKER_MANIFEST if fam == "docker" else oci.OCI_MANIFEST


def config_type(fam: str) -> str:
    return oci.DOCKER_CONFIG if fam == "docker" else oci.OCI_CONFIG


def layer_type(fam: str, compression: Compression) -> str:
    """The layer media type of ``compression`` in that family; Docker has no zstd type."""
    found = _LAYER_TYPES.get((fam, compression))
    if found is None:
        raise Unsupported(
            f"{compression.value} layers need an OCI image; the base image is Docker "
            "schema 2 (use --compression gzip or none)"
        )
    return found


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def scratch_config(platform: Platform) -> dict[str, Any]:
    """The config of an image with no layers yet, for a snapshot that has no parent."""
    return {
        **platform.to_json(),
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": []},
        "history": [],
    }


def extended_config(base: dict[str, Any], diff_id: str, created: str) -> dict[str, Any]:
    """``base`` with one more layer: its diff_id, a history line, and a new ``created``."""
    config = copy.deepcopy(base)
    rootfs = config.setdefault("rootfs", {"type": "layers"})
    rootfs["diff_ids"] = [*rootfs.get("diff_ids", []), diff_id]
    history = list(config.get("history") or [])
    history.append({"created": created, "created_by": HISTORY_CREATED_BY})
    config["history"] = history
    config["created"] = created
    return config


def manifest_document(fam: str, config: Descriptor, layers: Sequence[Descriptor]) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": manifest_type(fam),
        "config": _plain(config).to_json(),
        "layers": [_plain(layer).to_json() for layer in layers],
    }


def encode(document: dict[str, Any]) -> bytes:
    """Compact, key-ordered JSON: the same document always gives the same digest."""
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


def _plain(desc: Descriptor) -> Descriptor:
    """A descriptor as a manifest lists it (no platform: that belongs to index entries)."""
    return Descriptor(
        desc.media_type, desc.digest, desc.size, dict(desc.annotations), None, desc.urls
    )
