"""Hostile eStargz images against ``fsnap pull --lazy`` and a lazy mount (a real registry,
a real FUSE mount): what a TOC names must stay inside the layer, whatever the fetch path
(a read, the landmark prefetch, the background completion), and a hostile TOC never
kills the mount's daemon."""

from __future__ import annotations

import concurrent.futures
import io
import json
import os
import tarfile
import time
from pathlib import Path

import pytest
from image_builder import Blob, Image, Layer, tar_info
from support.cli import fsnap, succeeded
from support.image_mount import image_mounted
from support.registry import RegistryProcess

from fsnap import oci
from fsnap.archive.entry import Entry
from fsnap.client import Client
from fsnap.convert.estargz import (
    write_estargz,
)
from fsnap.convert.source import LANDMARK_CONTENTS, PREFETCH_LANDMARK, Member
from fsnap.labels import LAZY_LABEL
from fsnap.lazy.state import NotContained, write_file
from fsnap.lazy.toc import Chunk
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


def test_a_file_the_toc_replaces_by_a_directory_does_not_kill_the_mount(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    """A TOC names ``d`` twice: a file with contents (listed for prefetch), then a
    directory, which wins (the last entry for a path does). The prefetch of the file must
    not write over the directory, nor take the mount's daemon down with it: the mount
    serves ``d`` as the directory and the layer completes."""
    members: Members = [
        (tar_info("d", size=7), b"first\n\n"),
        (tar_info("d", tarfile.DIRTYPE, mode=0o755), None),
        (tar_info("d/inside", size=3), b"in\n"),
    ]
    repo = "hostile/lazy-file-then-dir"
    registry.push_image(repo, "v1", estargz_image(_prioritised(members)))
    root, ref, mnt = tmp_path / "root", f"{registry.host}/{repo}:v1", tmp_path / "mnt"
    _mounted_a_while(root, ref, mnt)
    with image_mounted(root, ref, mnt) as mounted:
        assert (mounted / "d/inside").read_bytes() == b"in\n"


@pytest.mark.parametrize("there", ["dir", "fifo", "symlink", "file-parent"])
def test_write_file_writes_only_a_regular_file_of_the_layer(tmp_path: Path, there: str) -> None:
    """``write_file`` at a path where the layer holds no regular file (what a TOC naming
    a path twice may leave) refuses with ``NotContained``: it neither writes through a
    symlink, nor blocks on a fifo, nor opens a directory."""
    layer = tmp_path / "layer"
    layer.mkdir()
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious\n")
    path = "f"
    if there == "dir":
        (layer / "f").mkdir()
    elif there == "fifo":
        os.mkfifo(layer / "f")
    elif there == "symlink":
        (layer / "f").symlink_to(outside)
    else:
        (layer / "d").write_bytes(b"")
        path = "d/f"
    data = b"hacked\n"
    chunk = Chunk(0, len(data), 100, 200, 0, "sha256:" + "0" * 64)
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        done = pool.submit(write_file, layer, Entry(path, "file", 0o644, size=7), [(chunk, data)])
        with pytest.raises(NotContained):
            done.result(timeout=5)
    finally:
        if there == "fifo" and not done.done():  # blocked opening it: let it go
            os.close(os.open(layer / "f", os.O_RDONLY | os.O_NONBLOCK))
        pool.shutdown()
    assert outside.read_bytes() == b"precious\n"
