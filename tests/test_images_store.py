"""Image records and manifest documents: parsing, platform selection, gc labels, refusals."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fsnap import oci
from fsnap.db import Database
from fsnap.digest import sha256_of
from fsnap.errors import InvalidArgument, NotFound, Unsupported
from fsnap.images.manifest import (
    index_labels,
    kind_of,
    load_document,
    manifest_labels,
    parse_config,
    parse_index,
    parse_manifest,
    select_manifests,
)
from fsnap.images.store import Image, ImageStore
from fsnap.oci import Descriptor, Platform

# No mount, no registry: these tests take seconds, so a minute means a hang.
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def images(tmp_path: Path) -> Iterator[ImageStore]:
    db = Database(tmp_path)
    try:
        yield ImageStore(db)
    finally:
        db.close()


def desc(media_type: str, seed: str, platform: Platform | None = None) -> Descriptor:
    return Descriptor(media_type, sha256_of(seed.encode()), len(seed), platform=platform)


def doc_desc(media_type: str, doc: Any) -> tuple[Descriptor, bytes]:
    data = json.dumps(doc).encode()
    return Descriptor(media_type, sha256_of(data), len(data)), data


def test_image_store_roundtrip_keeps_created(images: ImageStore) -> None:
    target = desc(oci.OCI_MANIFEST, "m")
    first = images.create_or_update(
        Image("localhost:5000/a:1", target, platforms=(Platform("linux", "amd64"),), size=42)
    )
    again = images.create_or_update(Image("localhost:5000/a:1", target, size=43))
    assert again.created == first.created
    assert again.updated >= first.updated
    got = images.get("localhost:5000/a:1")
    assert got.size == 43
    assert got.target == target
    assert [i.name for i in images.list()] == ["localhost:5000/a:1"]
    images.delete("localhost:5000/a:1")
    with pytest.raises(NotFound, match="localhost:5000/a:1"):
        images.delete("localhost:5000/a:1")
    with pytest.raises(NotFound):
        images.get("localhost:5000/a:1")


def test_manifest_children_and_gc_labels() -> None:
    config = desc(oci.OCI_CONFIG, "c")
    layers = [desc(oci.OCI_LAYER_GZIP, "l0"), desc(oci.OCI_LAYER_ZSTD, "l1")]
    manifest_desc, data = doc_desc(
        oci.OCI_MANIFEST,
        {
            "schemaVersion": 2,
            "mediaType": oci.OCI_MANIFEST,
            "config": config.to_json(),
            "layers": [layer.to_json() for layer in layers],
        },
    )
    doc = load_document(manifest_desc, data)
    assert kind_of(manifest_desc, doc) == "manifest"
    manifest = parse_manifest(manifest_desc, doc)
    assert manifest.config == config
    assert list(manifest.layers) == layers
    assert manifest_labels(manifest) == {
        "containerd.io/gc.ref.content.config": config.digest,
        "containerd.io/gc.ref.content.l.0": layers[0].digest,
        "containerd.io/gc.ref.content.l.1": layers[1].digest,
    }


def two_platform_index() -> tuple[Descriptor, dict[str, Any], list[Descriptor]]:
    children = [
        desc(oci.OCI_MANIFEST, "arm", Platform("linux", "arm64", "v8")),
        desc(oci.OCI_MANIFEST, "amd", Platform("linux", "amd64")),
        desc(oci.OCI_MANIFEST, "arm-novariant", Platform("linux", "arm64")),
    ]
    index_desc, data = doc_desc(
        oci.OCI_INDEX, {"schemaVersion": 2, "manifests": [c.to_json() for c in children]}
    )
    return index_desc, load_document(index_desc, data), children


def test_platform_selection_picks_one_best_match() -> None:
    index_desc, doc, children = two_platform_index()
    assert kind_of(index_desc, doc) == "index"
    index = parse_index(index_desc, doc)
    assert select_manifests(index, Platform("linux", "amd64")) == (children[1],)
    assert select_manifests(index, Platform("linux", "arm64", "v8")) == (children[0],)
    assert select_manifests(index, None) == tuple(children)
    with pytest.raises(NotFound, match="linux/s390x"):
        select_manifests(index, Platform("linux", "s390x"), ref="example/x:1")
    assert index_labels(index, children[1:2]) == {
        "containerd.io/gc.ref.content.m.1": children[1].digest
    }


def test_host_platform_matches_amd64_child_here() -> None:
    index_desc, doc, _children = two_platform_index()
    chosen = select_manifests(parse_index(index_desc, doc), Platform.host())
    assert len(chosen) == 1
    assert chosen[0].platform is not None
    assert chosen[0].platform.architecture == Platform.host().architecture


def test_config_gives_platform_and_diff_ids() -> None:
    diff = sha256_of(b"layer")
    config_desc, data = doc_desc(
        oci.OCI_CONFIG,
        {"os": "linux", "architecture": "x86_64", "rootfs": {"type": "layers", "diff_ids": [diff]}},
    )
    config = parse_config(config_desc, data)
    assert config.platform == Platform("linux", "amd64")
    assert config.diff_ids == (diff,)


def test_schema1_is_refused_by_media_type() -> None:
    schema1 = desc(oci.DOCKER_SCHEMA1_SIGNED, "s1")
    with pytest.raises(Unsupported, match="prettyjws"):
        load_document(schema1, b"{}")
    untyped, data = doc_desc("", {"schemaVersion": 1, "fsLayers": []})
    with pytest.raises(Unsupported, match=re.escape(oci.DOCKER_SCHEMA1)):
        load_document(untyped, data)


def test_non_json_and_oversized_documents_are_invalid() -> None:
    garbage = b"<html>not json</html>"
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        load_document(Descriptor(oci.OCI_MANIFEST, sha256_of(garbage), len(garbage)), garbage)
    huge = b'{"a":"' + b"x" * oci.MAX_MANIFEST_SIZE + b'"}'
    with pytest.raises(InvalidArgument, match="limit"):
        load_document(Descriptor(oci.OCI_MANIFEST, sha256_of(huge), len(huge)), huge)
    with pytest.raises(InvalidArgument, match="JSON object"):
        load_document(Descriptor(oci.OCI_MANIFEST, sha256_of(b"[]"), 2), b"[]")


def test_unknown_layer_media_type_is_unsupported() -> None:
    manifest_desc, data = doc_desc(
        oci.OCI_MANIFEST,
        {
            "schemaVersion": 2,
            "config": desc(oci.OCI_CONFIG, "c").to_json(),
            "layers": [desc("application/x-weird", "w").to_json()],
        },
    )
    with pytest.raises(Unsupported, match="application/x-weird"):
        parse_manifest(manifest_desc, load_document(manifest_desc, data))
