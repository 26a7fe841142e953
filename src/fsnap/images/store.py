"""Image records: LMDB table ``images``, name -> target descriptor and what the pull saw.

A record is what ``fsnap images`` lists and what gc will start from. Besides containerd's
fields (name, target, created, updated, labels) it keeps the platforms the pull selected
and the bytes it stored, so listing images never has to re-walk manifests.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from fsnap.db import Database
from fsnap.errors import InvalidArgument, NotFound
from fsnap.oci import Descriptor, Platform

IMAGES_TABLE = "images"


@dataclass(frozen=True)
class Image:
    """One named image. ``size`` is the sum of every blob the pull stored for it."""

    name: str
    target: Descriptor
    created: float = 0.0
    updated: float = 0.0
    labels: dict[str, str] = field(default_factory=dict)
    platforms: tuple[Platform, ...] = ()
    size: int = 0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Image:
        return cls(
            name=str(data["name"]),
            target=Descriptor.from_json(data["target"]),
            created=float(data["created"]),
            updated=float(data["updated"]),
            labels=dict(data.get("labels") or {}),
            platforms=tuple(Platform.from_json(p) for p in data.get("platforms") or ()),
            size=int(data.get("size") or 0),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "target": self.target.to_json(),
            "created": self.created,
            "updated": self.updated,
            "labels": dict(self.labels),
            "platforms": [p.to_json() for p in self.platforms],
            "size": self.size,
        }


class ImageStore:
    """Named images in the shared LMDB environment."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, name: str) -> Image:
        data = self.db.get_json(IMAGES_TABLE, name)
        if data is None:
            raise NotFound(f"image {name} not found")
        return Image.from_json(data)

    def list(self) -> list[Image]:
        return [Image.from_json(data) for _, data in self.db.items_json(IMAGES_TABLE)]

    def create_or_update(self, image: Image, labels: Mapping[str, str] | None = None) -> Image:
        """Record ``image``; an existing record keeps its ``created`` time, as containerd's.

        Pulling another platform of the same index adds to the record's platforms, and its
        blobs to the size (the index itself counted once; a layer two platforms share would
        count twice, which registries' per-architecture layers make rare)."""
        _check_pin(image)
        now = time.time()
        existing = self.db.get_json(IMAGES_TABLE, image.name)
        created = float(existing["created"]) if existing else now
        merged = {**image.labels, **(labels or {})}
        record = replace(image, created=created, updated=now, labels=merged)
        if existing:
            before = Image.from_json(existing)
            kept = [p for p in before.platforms if p not in image.platforms]
            if before.target.digest == image.target.digest and image.platforms and kept:
                added = tuple(p for p in image.platforms if p not in before.platforms)
                size = before.size + image.size - image.target.size if added else before.size
                record = replace(record, platforms=before.platforms + added, size=size)
        self.db.put_json(IMAGES_TABLE, image.name, record.to_json())
        return record

    def delete(self, name: str) -> None:
        if not self.db.delete(IMAGES_TABLE, name):
            raise NotFound(f"image {name} not found")


def _check_pin(image: Image) -> None:
    """A name with a digest (``repo@sha256:...``, as a pull by digest records) names that
    content only: recording it over another image is InvalidArgument, as docker refuses."""
    _, at, pinned = image.name.rpartition("@")
    if at and pinned != image.target.digest:
        raise InvalidArgument(
            f"cannot name an image {image.name}: the digest in the name is not "
            f"{image.target.digest}, the image's own; name it by a tag"
        )
