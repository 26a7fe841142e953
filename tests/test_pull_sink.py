"""The unpack-while-downloading hook: a LayerSink sees every layer's bytes, in order.

These pulls pass ``unpack=False`` so that the sink under test is the only consumer (the
unpacker is itself a sink, tested with ``fsnap.unpack.unpacker``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fault_server import FaultServer
from support.registry import RegistryProcess, make_image, make_layer

from fsnap.client import Client
from fsnap.errors import DigestMismatch
from fsnap.images.manifest import ImageConfig, Manifest
from fsnap.oci import Descriptor, Platform

HOST = Platform.host()


class RecordingSink:
    """Keeps what it was told; ``wanted`` decides which layers it asks bytes for."""

    def __init__(self, wanted: set[str] | None = None) -> None:
        self.wanted = wanted
        self.events: list[tuple[str, str]] = []
        self.data: dict[str, bytearray] = {}
        self.configs: list[ImageConfig] = []

    async def manifest_ready(self, manifest: Manifest, config: ImageConfig) -> None:
        self.events.append(("manifest", manifest.descriptor.digest))
        self.configs.append(config)

    async def layer_started(self, desc: Descriptor) -> bool:
        self.events.append(("started", desc.digest))
        self.data[desc.digest] = bytearray()
        return self.wanted is None or desc.digest in self.wanted

    async def feed(self, desc: Descriptor, chunk: bytes) -> None:
        assert ("done", desc.digest) not in self.events
        if not self.data[desc.digest]:
            self.events.append(("bytes", desc.digest))
        self.data[desc.digest] += chunk

    async def layer_done(self, desc: Descriptor) -> None:
        self.events.append(("done", desc.digest))

    async def layer_failed(self, desc: Descriptor) -> None:
        self.events.append(("failed", desc.digest))


def test_sink_receives_each_layer_whole_and_in_order(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    layers = [make_layer({f"f{i}": os.urandom(1_500_000)}, "gzip") for i in range(3)]
    image = make_image(layers, platform=HOST)
    registry.push_image("sink/fresh", "v1", image)
    sink = RecordingSink()
    with Client(tmp_path / "root") as client:
        client.pull(f"{registry.host}/sink/fresh:v1", sink=sink, unpack=False)
    assert sink.events[0] == ("manifest", image.manifest.digest)
    assert sink.configs[0].diff_ids == tuple(image.diff_ids)
    for layer in layers:
        digest = layer.blob.digest
        assert bytes(sink.data[digest]) == layer.blob.data
        assert sink.events.index(("started", digest)) < sink.events.index(("done", digest))
    assert not any(kind == "failed" for kind, _ in sink.events)


def test_layers_download_biggest_first(registry: RegistryProcess, tmp_path: Path) -> None:
    """The unpacker applies layers as their bytes come, two at a time: the biggest (the
    longest apply) must come first, not wherever the manifest puts it. One download slot
    makes the order exact (the manifest's order or its reverse, without the sort)."""
    sizes = [200_000, 900_000, 500_000, 300_000]
    layers = [make_layer({"f": os.urandom(n)}, "gzip") for n in sizes]
    image = make_image(layers, platform=HOST)
    registry.push_image("sink/order", "v1", image)
    sink = RecordingSink()
    with Client(tmp_path / "root") as client:
        client.pull(
            f"{registry.host}/sink/order:v1", sink=sink, unpack=False, max_concurrent_downloads=1
        )
    flowed = [digest for kind, digest in sink.events if kind == "bytes"]
    by_size = sorted(layers, key=lambda layer: -len(layer.blob.data))
    assert flowed == [layer.blob.digest for layer in by_size]


def test_sink_gets_stored_and_partial_bytes_replayed(
    registry: RegistryProcess, fault_server: FaultServer, tmp_path: Path
) -> None:
    layers = [make_layer({"a": os.urandom(400_000)}, "none") for _ in range(2)]
    image = make_image(layers, platform=HOST)
    registry.push_image("sink/replay", "v1", image)
    stored, partial = layers[0].blob, layers[1].blob
    with Client(tmp_path / "root") as client:
        with client.content.writer(stored.digest, stored.descriptor()) as writer:
            writer.write(stored.data)
            writer.commit()
        with client.content.writer(partial.digest, partial.descriptor()) as writer:
            writer.write(partial.data[:150_000])
        sink = RecordingSink(wanted={stored.digest, partial.digest})
        client.pull(f"{fault_server.host}/sink/replay:v1", sink=sink, unpack=False)
    assert bytes(sink.data[stored.digest]) == stored.data
    assert bytes(sink.data[partial.digest]) == partial.data
    assert not fault_server.seen("GET", stored.digest)
    ranges = [s.headers.get("range") for s in fault_server.seen("GET", partial.digest)]
    assert ranges == ["bytes=150000-"]


def test_sink_that_declines_gets_no_bytes(registry: RegistryProcess, tmp_path: Path) -> None:
    image = make_image([make_layer({"x": "y"})], platform=HOST)
    registry.push_image("sink/decline", "v1", image)
    sink = RecordingSink(wanted=set())
    with Client(tmp_path / "root") as client:
        client.pull(f"{registry.host}/sink/decline:v1", sink=sink, unpack=False)
        assert client.content.exists(image.layers[0].blob.digest)
    assert sink.data == {image.layers[0].blob.digest: bytearray()}
    assert ("done", image.layers[0].blob.digest) not in sink.events


def test_sink_hears_of_a_failed_layer(
    registry: RegistryProcess, fault_server: FaultServer, tmp_path: Path
) -> None:
    image = make_image([make_layer({"x": "y" * 5000})], platform=HOST)
    registry.push_image("sink/failed", "v1", image)
    layer = image.layers[0].blob
    with Client(tmp_path / "root") as client:
        config = image.config
        with client.content.writer(config.digest, config.descriptor()) as writer:
            writer.write(config.data)
            writer.commit()
        fault_server.corrupt_blob(times=1)  # the config is stored: the layer gets corrupted
        sink = RecordingSink()
        with pytest.raises(DigestMismatch, match=layer.digest):
            client.pull(f"{fault_server.host}/sink/failed:v1", sink=sink, unpack=False)
    assert ("failed", layer.digest) in sink.events
    assert ("done", layer.digest) not in sink.events
