"""What ``fsnap run`` needs of an fsnap store, as a Protocol: ``fsnap.Client`` is one.

``fsnap run`` sits above the client (it mounts, unmounts, commits and removes snapshots
through the client's verbs), while the client's ``gc`` reaches down into ``fsnap run`` to
clean the runs of a dead fsnap first. Typing ``run`` against this Protocol instead of
against ``Client`` keeps that a one-way dependency: ``fsnap.run`` never imports the client.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from fsnap.content.store import ContentStore
    from fsnap.images.store import Image, ImageStore
    from fsnap.mount.manager import MountOptions
    from fsnap.mount.records import MountInfo
    from fsnap.snapshots.snapshotter import LocalSnapshotter


class Host(Protocol):
    """An open fsnap store with the verbs a run uses (see ``fsnap.Client`` for each)."""

    root: Path  # the fsnap root: run records live under ``runs/``

    @property
    def content(self) -> ContentStore: ...

    @property
    def images(self) -> ImageStore: ...

    @property
    def snapshots(self) -> LocalSnapshotter: ...

    def mount(
        self,
        ref: str,
        mountpoint: Path,
        options: MountOptions,
        *,
        writable: bool = ...,
        key: str | None = ...,
        labels: Mapping[str, str] | None = ...,
    ) -> MountInfo:
        """Mount image ``ref`` at ``mountpoint``: read-only, or ``writable`` on a new
        active snapshot ``key`` (a generated name if None) labelled ``labels`` from its
        creation on."""
        ...

    def umount(self, mountpoint: str) -> MountInfo:
        """Unmount ``mountpoint`` (NotFound if nothing of fsnap's is there)."""
        ...

    def commit_image(self, key: str, new_ref: str, *, base: str | None = ...) -> Image:
        """Commit active snapshot ``key`` as a new image ``new_ref`` on image ``base``."""
        ...
