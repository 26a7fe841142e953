"""Hostile eStargz images against ``fsnap pull --lazy`` and a lazy mount (a real registry,
a real FUSE mount): what a TOC names must stay inside the layer, whatever the fetch path
(a read, the landmark prefetch, the background completion), and a hostile TOC never
kills the mount's daemon."""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path

import pytest
from image_builder import Blob, Image, Layer, tar_info
from support.cli import fsnap, succeeded
from support.image_mount import image_mounted
from support.registry import RegistryProcess

from fsnap import oci
from fsnap.client import Client
from fsnap.convert.estargz import write_estargz
from fsnap.convert.source import LANDMARK_CONTENTS, PREFETCH_LANDMARK, Member
from fsnap.labels import LAZY_LABEL
from fsnap.oci import Platform

pytestmark = pytest.mark.timeout(300)
Members = list[tuple[tarfile.TarInfo, bytes | None]]


def estargz_image(members: Members) -> Image:
    """A one-layer image whose layer is ``members`` written as eStargz by fsnap's own
    writer (a valid blob, its TOC pinned by the descriptor's annotation)."""
    out = io.BytesIO()
    written = write_estargz(
        [Member(info, None if data is None else io.BytesIO(data)) for info, data in members],
        out,
        4 << 20,
    )
    blob = out.getvalue()
    layer = Layer(Blob(oci.OCI_LAYER_GZIP, blob), b"")
    platform = Platform.host()
    config = Blob(
        oci.OCI_CONFIG,
        json.dumps(
            {
                "architecture": platform.architecture,
                "os": platform.os,
                "config": {"Cmd": ["/bin/sh"]},
                "rootfs": {"type": "layers", "diff_ids": [written.diff_id]},
            }
        ).encode(),
    )
    desc = oci.Descriptor(
        oci.OCI_LAYER_GZIP, layer.blob.digest, len(blob), annotations=written.annotations
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": oci.OCI_MANIFEST,
        "config": config.descriptor().to_json(),
        "layers": [desc.to_json()],
    }
    return Image(Blob(oci.OCI_MANIFEST, json.dumps(manifest).encode()), config, (layer,), platform)


def _prioritised(members: Members) -> Members:
    """``members`` then the landmark: all of them are the layer's files to prefetch."""
    landmark = tar_info(PREFETCH_LANDMARK, size=len(LANDMARK_CONTENTS))
    return [*members, (landmark, LANDMARK_CONTENTS)]


def _mounted_a_while(root: Path, ref: str, mnt: Path) -> None:
    """Pull ``ref`` lazily, mount it with its background work on and let the prefetch and
    the completion run; the mount must still serve afterwards."""
    succeeded(fsnap(root, "pull", "--lazy", ref))
    with image_mounted(root, ref, mnt) as mounted:
        deadline = time.monotonic() + 30
        while _lazy(root) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _lazy(root), "the background fetch did not complete the layer"
        assert sorted(p.name for p in mounted.iterdir())  # still serving


def _lazy(root: Path) -> bool:
    with Client(root) as client:
        return any(LAZY_LABEL in info.labels for info in client.snapshots.walk())


@pytest.mark.parametrize("target", ["absolute", "relative"])
def test_a_symlinked_parent_in_the_toc_cannot_write_outside_the_layer(
    registry: RegistryProcess, tmp_path: Path, target: str
) -> None:
    """A TOC names a symlink ``a`` to a host directory, then a file ``a/x`` with contents,
    listed for prefetch. The applier lays ``a/x`` out inside the layer (the symlink resolved
    from the layer's root); the prefetch, which writes what the TOC names, must not follow
    ``a`` on the host: the host's file keeps its bytes, nothing is created there."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "kept").write_bytes(b"precious\n")
    link = str(outside) if target == "absolute" else "../" * 40 + str(outside).lstrip("/")
    members: Members = [
        (tar_info("a", tarfile.SYMTYPE, linkname=link), None),
        (tar_info("a/kept", size=7, mode=0o4755), b"hacked\n"),
        (tar_info("a/new", size=7, mode=0o4755), b"hacked\n"),
    ]
    repo = f"hostile/lazy-symlink-{target}"
    registry.push_image(repo, "v1", estargz_image(_prioritised(members)))
    _mounted_a_while(tmp_path / "root", f"{registry.host}/{repo}:v1", tmp_path / "mnt")
    assert (outside / "kept").read_bytes() == b"precious\n"
    assert sorted(p.name for p in outside.iterdir()) == ["kept"]
