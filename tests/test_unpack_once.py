"""Each layer is applied exactly once per pull, however the download and commit tasks race.

The commit task of a manifest can reach a layer before the pipeline has announced that
layer's stream; it must wait for the announcement instead of applying the stored blob as
well (which doubled the unpack work and went unnoticed in the snapshots it produced).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from support.registry import RegistryProcess, busybox_image
from support.unpack import three_layer_image

from fsnap.client import Client
from fsnap.oci import Descriptor
from fsnap.progress import Meter, PullProgress


class CountingProgress(PullProgress):
    def __init__(self) -> None:
        self.unpacking: Counter[str] = Counter()
        self.unpacked: Counter[str] = Counter()

    def layer_unpacking(self, desc: Descriptor, applied: Meter) -> None:
        self.unpacking[desc.digest] += 1

    def layer_unpacked(self, desc: Descriptor, chain_id: str) -> None:
        self.unpacked[desc.digest] += 1


def test_every_layer_is_applied_once(registry: RegistryProcess, tmp_path: Path) -> None:
    registry.push_image("once/busybox", "v1", busybox_image())
    registry.push_image("once/three", "v1", three_layer_image())
    for repo, layers in (("once/busybox", 1), ("once/three", 3)):
        progress = CountingProgress()
        with Client(tmp_path / repo.replace("/", "-")) as client:
            client.pull(f"{registry.host}/{repo}:v1", progress=progress)
        assert len(progress.unpacked) == layers
        assert set(progress.unpacking.values()) == {1}, progress.unpacking
        assert set(progress.unpacked.values()) == {1}, progress.unpacked
