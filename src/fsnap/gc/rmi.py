"""Safe image removal (``fsnap rmi``): forget the record, refuse while the image is mounted.

Removing an image only deletes its record, as in containerd: the blobs and snapshots stay
until ``fsnap gc`` finds nothing else holds them. The record is all a mounted image has to
say what it is, so removing it under a live (or stale, not yet unmounted) mount is refused
with Busy, naming the mount point so the user knows what to unmount.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from fsnap.errors import Busy, InvalidArgument
from fsnap.images.store import Image, ImageStore
from fsnap.reference import Reference

if TYPE_CHECKING:
    from fsnap.mount.records import MountInfo


def remove_image(images: ImageStore, name: str, mounts: Iterable[MountInfo]) -> Image:
    """Delete image ``name``'s record and return it; NotFound if absent, Busy if one of
    ``mounts`` (the store's, ``fsnap.mount.records.list_mounts``) mounts it."""
    image = images.get(name)
    held = mounts_of(mounts, image.name)
    if held:
        where = ", ".join(mount.mountpoint for mount in held)
        first = held[0].mountpoint
        raise Busy(f"image {image.name} is mounted at {where}: run `fsnap umount {first}` first")
    images.delete(image.name)
    return image


def mounts_of(mounts: Iterable[MountInfo], name: str) -> list[MountInfo]:
    """Those of ``mounts`` that mount image ``name`` and still exist (live, stale or
    starting)."""
    return [
        mount
        for mount in mounts
        if mount.kind == "image" and mount.state != "gone" and _same_image(mount.source, name)
    ]


def _same_image(source: str, name: str) -> bool:
    """Mount records keep the reference as the user typed it; compare normalised names."""
    try:
        return str(Reference.parse(source)) == name
    except InvalidArgument:
        return source == name
