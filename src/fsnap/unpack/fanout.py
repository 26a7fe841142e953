"""Two ``LayerSink``s on one pull: a caller's own sink next to the unpacker."""

from __future__ import annotations

from fsnap.images.manifest import ImageConfig, Manifest
from fsnap.oci import Descriptor
from fsnap.pull import LayerSink


class FanOut:
    """Passes every call to each sink that wants the layer (``layer_started`` True)."""

    def __init__(self, *sinks: LayerSink) -> None:
        self._sinks = sinks
        self._wanted: dict[str, list[LayerSink]] = {}

    async def manifest_ready(self, manifest: Manifest, config: ImageConfig) -> None:
        for sink in self._sinks:
            await sink.manifest_ready(manifest, config)

    async def layer_started(self, desc: Descriptor) -> bool:
        wanted = [sink for sink in self._sinks if await sink.layer_started(desc)]
        self._wanted[desc.digest] = wanted
        return bool(wanted)

    async def feed(self, desc: Descriptor, chunk: bytes) -> None:
        for sink in self._wanted[desc.digest]:
            await sink.feed(desc, chunk)

    async def layer_done(self, desc: Descriptor) -> None:
        for sink in self._wanted[desc.digest]:
            await sink.layer_done(desc)

    async def layer_failed(self, desc: Descriptor) -> None:
        for sink in self._wanted[desc.digest]:
            await sink.layer_failed(desc)
