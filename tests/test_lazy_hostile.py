"""Hostile eStargz images against ``fsnap pull --lazy`` and a lazy mount (a real registry,
a real FUSE mount): what a TOC names must stay inside the layer, whatever the fetch path
(a read, the landmark prefetch, the background completion), and a hostile TOC never
kills the mount's daemon."""

from __future__ import annotations

import concurrent.futures
import errno
import gzip
import io
import json
import os
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fault_server import FaultServer
from image_builder import Blob, Image, Layer, tar_info
from listing import differences, full_listing
from support.cli import fsnap, succeeded
from support.image_mount import image_mounted
from support.registry import RegistryProcess

from fsnap import oci
from fsnap.archive.entry import Entry
from fsnap.client import Client
from fsnap.convert.estargz import (
    FOOTER_SIZE,
    TOC_DIGEST_ANNOTATION,
    TOC_NAME,
    footer,
    write_estargz,
)
from fsnap.convert.source import LANDMARK_CONTENTS, PREFETCH_LANDMARK, Member
from fsnap.digest import sha256_of
from fsnap.labels import LAZY_LABEL
from fsnap.lazy import fetch
from fsnap.lazy.state import NotContained, write_file
from fsnap.lazy.toc import HIDDEN, Chunk, estargz_toc_json, estargz_toc_offset
from fsnap.oci import Platform

pytestmark = pytest.mark.timeout(300)
Members = list[tuple[tarfile.TarInfo, bytes | None]]
NOISE = os.urandom(300 << 10)  # incompressible: its range is long enough to stall in


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


def with_toc(image: Image, edit: Callable[[list[dict[str, Any]]], None]) -> Image:
    """``image`` with its eStargz layer's TOC entries changed by ``edit`` (in place): the
    payload kept, a new TOC member and footer, the annotation pinning the new JSON (a
    registry serving a TOC that says what it likes, correctly pinned, and the config the
    blob's diff_id)."""
    (layer,) = image.layers
    blob = layer.blob.data
    offset = estargz_toc_offset(blob[-FOOTER_SIZE:], len(blob))
    doc = json.loads(estargz_toc_json(blob[offset:-FOOTER_SIZE]))
    edit(doc["entries"])
    toc = json.dumps(doc, separators=(",", ":")).encode("ascii")
    info = tarfile.TarInfo(TOC_NAME)
    info.size = len(toc)
    tar = info.tobuf(tarfile.GNU_FORMAT) + toc + b"\0" * (-len(toc) % 512) + b"\0" * 1024
    new = blob[:offset] + gzip.compress(tar) + footer(offset)
    config = json.loads(image.config.data)
    config["rootfs"]["diff_ids"] = [sha256_of(gzip.decompress(new))]
    config_blob = Blob(oci.OCI_CONFIG, json.dumps(config).encode())
    manifest = json.loads(image.manifest.data)
    manifest["config"] = config_blob.descriptor().to_json()
    manifest["layers"][0].update(
        digest=sha256_of(new),
        size=len(new),
        annotations={**manifest["layers"][0]["annotations"], TOC_DIGEST_ANNOTATION: sha256_of(toc)},
    )
    return Image(
        Blob(oci.OCI_MANIFEST, json.dumps(manifest).encode()),
        config_blob,
        (Layer(Blob(oci.OCI_LAYER_GZIP, new), b""),),
        image.platform,
    )


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
    ``a`` on the host: the host's file keeps its bytes, nothing is created there.

    Since fd89f82 such a layer (a file whose resolved path is not its TOC name) is pulled in
    full, not lazily, so this checks the whole path end to end; the lazy writer's own
    containment, for a file table that names such a path anyway (one written by an older
    fsnap), is ``test_write_file_writes_only_a_regular_file_of_the_layer``."""
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


@pytest.mark.parametrize("there", ["dir", "fifo", "symlink", "file-parent", "symlink-parent"])
def test_write_file_writes_only_a_regular_file_of_the_layer(tmp_path: Path, there: str) -> None:
    """``write_file`` at a path where the layer holds no regular file (what a TOC naming
    a path twice may leave), or under a symlinked parent (a file table naming a path the
    applier resolved elsewhere), refuses with ``NotContained``: it neither writes through
    a symlink, nor blocks on a fifo, nor opens a directory."""
    layer = tmp_path / "layer"
    layer.mkdir()
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious\n")
    outdir = tmp_path / "outdir"  # what a symlinked parent would reach on the host
    outdir.mkdir()
    (outdir / "kept").write_bytes(b"precious\n")
    path = "f"
    if there == "symlink-parent":
        (layer / "a").symlink_to(outdir)
        path = "a/kept"
    elif there == "dir":
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
    assert [p.name for p in outdir.iterdir()] == ["kept"]
    assert (outdir / "kept").read_bytes() == b"precious\n"


def _rename(old: str, new: str) -> Callable[[list[dict[str, Any]]], None]:
    def edit(entries: list[dict[str, Any]]) -> None:
        for entry in entries:
            if entry["name"] == old:
                entry["name"] = new

    return edit


@pytest.mark.parametrize(
    "name",
    [
        "x" * 256,  # one byte over NAME_MAX: no file system takes it
        "etc/\ud800",  # a lone surrogate: no bytes on disk spell it
    ],
    ids=["name-max", "surrogate"],
)
def test_a_toc_naming_a_file_no_disk_can_hold_is_refused_at_pull(
    registry: RegistryProcess, tmp_path: Path, name: str
) -> None:
    """A TOC (correctly pinned) names a file with contents by a name no file system can
    hold. A full pull's applier refuses such a name as it creates the file; a lazy pull
    creates no file with contents, so its TOC check must: else the pull records the layer
    (or dies on the name: exit 70) and the mount's first write of the file (a read, the
    prefetch or the completion) fails outside any typed error and kills the daemon."""
    members: Members = [
        (tar_info("etc", tarfile.DIRTYPE, mode=0o755), None),
        (tar_info("etc/placeholder", size=7), b"hello!\n"),
    ]
    image = with_toc(estargz_image(members), _rename("etc/placeholder", name))
    repo = f"hostile/lazy-name-{len(name)}"
    registry.push_image(repo, "v1", image)
    done = fsnap(tmp_path / "root", "pull", "--lazy", f"{registry.host}/{repo}:v1")
    assert done.returncode == 4, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "bad name" in done.stderr, done.stderr


def _layer_dir(root: Path) -> Path:
    with Client(root) as client:
        (name,) = [i.name for i in client.snapshots.walk() if LAZY_LABEL in i.labels]
        return client.snapshots.dir(name)


def _mount_log(root: Path) -> str:
    return "".join(log.read_text() for log in (root / "mounts").glob("*.log"))


def _serves_with_a_refusing_disk(root: Path, ref: str, mnt: Path, frozen: Path, read: str) -> None:
    """Mount ``ref`` lazily with ``frozen`` made immutable (EPERM for every write under
    it): the background work says it cannot complete, ``read`` still reads (``etc/x`` is
    ``first``, ``usr/y`` ``second``) and the layer stays lazy."""
    subprocess.run(["chattr", "+i", str(frozen)], check=True)
    try:
        with image_mounted(root, ref, mnt) as mounted:
            deadline = time.monotonic() + 30
            while "cannot be completed" not in _mount_log(root) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert "Operation not permitted" in _mount_log(root)
            expected = {"etc/x": b"first\n", "usr/y": b"second\n"}[read]
            assert (mounted / read).read_bytes() == expected
            assert _lazy(root)
    finally:
        subprocess.run(["chattr", "-i", str(frozen)], check=True)


def test_a_disk_error_in_the_background_work_leaves_the_mount_serving(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    """The prefetch and the completion write files into the layer's directory; a write
    that fails there (any disk error: here EPERM, ``etc`` made immutable) is logged and the
    layer stays lazy. It must not end the mount: its other files are still served."""
    members: Members = [
        (tar_info("etc", tarfile.DIRTYPE, mode=0o755), None),
        (tar_info("etc/x", size=6), b"first\n"),
        (tar_info("usr", tarfile.DIRTYPE, mode=0o755), None),
        (tar_info("usr/y", size=7), b"second\n"),
    ]
    repo = "hostile/lazy-disk-error"
    registry.push_image(repo, "v1", estargz_image([*_prioritised(members[:2]), *members[2:]]))
    root, ref = tmp_path / "root", f"{registry.host}/{repo}:v1"
    succeeded(fsnap(root, "pull", "--lazy", ref))
    _serves_with_a_refusing_disk(root, ref, tmp_path / "mnt", _layer_dir(root) / "etc", "usr/y")


def _two_files_image(fault_server: FaultServer, registry: RegistryProcess, repo: str) -> str:
    """An eStargz image of ``etc/x`` and ``usr/y`` pushed as ``repo:v1``; its reference
    through ``fault_server``."""
    members: Members = [
        (tar_info("etc", tarfile.DIRTYPE, mode=0o755), None),
        (tar_info("etc/x", size=len(NOISE)), NOISE),
        (tar_info("usr", tarfile.DIRTYPE, mode=0o755), None),
        (tar_info("usr/y", size=7), b"second\n"),
    ]
    registry.push_image(repo, "v1", estargz_image(members))
    return f"{fault_server.host}/{repo}:v1"


def test_a_registry_stalling_mid_range_gives_eio_within_the_read_deadline(
    registry: RegistryProcess, fault_server: FaultServer, tmp_path: Path
) -> None:
    """A registry that sends part of a read's range and then nothing: the read gets EIO
    within the read deadline (not a hang), the mount serves on, and the same read
    succeeds once the registry answers."""
    ref = _two_files_image(fault_server, registry, "hostile/lazy-stall")
    root = tmp_path / "root"
    succeeded(fsnap(root, "pull", "--lazy", ref))
    gate = threading.Event()
    with image_mounted(root, ref, tmp_path / "mnt", "--no-background-fetch") as mounted:
        fault_server.stall_blob_after(1000, gate)
        started = time.monotonic()
        with pytest.raises(OSError) as failed:
            (mounted / "etc/x").read_bytes()
        assert failed.value.errno == errno.EIO
        assert time.monotonic() - started < fetch.READ_DEADLINE + 5
        gate.set()
        assert (mounted / "usr/y").read_bytes() == b"second\n"
        assert (mounted / "etc/x").read_bytes() == NOISE


def test_a_registry_ignoring_range_still_gives_the_right_bytes(
    registry: RegistryProcess, fault_server: FaultServer, tmp_path: Path
) -> None:
    """A registry (or a proxy) that answers every Range request with the whole blob (200):
    the pull finds the TOC and each read its own bytes in it."""
    ref = _two_files_image(fault_server, registry, "hostile/lazy-no-range")
    fault_server.ignore_range = True
    root = tmp_path / "root"
    succeeded(fsnap(root, "pull", "--lazy", ref))
    with image_mounted(root, ref, tmp_path / "mnt", "--no-background-fetch") as mounted:
        assert (mounted / "usr/y").read_bytes() == b"second\n"
        assert (mounted / "etc/x").read_bytes() == NOISE


def test_a_disk_error_in_the_background_download_leaves_the_mount_serving(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    """The background download writes the blob into the content store's ingest; a disk
    error there (here EPERM: the ingest directory made immutable) is logged, the layer
    stays lazy, and the mount serves on: its reads fetch as before."""
    members: Members = [
        (tar_info("etc", tarfile.DIRTYPE, mode=0o755), None),
        (tar_info("etc/x", size=6), b"first\n"),
    ]
    repo = "hostile/lazy-download-error"
    registry.push_image(repo, "v1", estargz_image(members))
    root, ref = tmp_path / "root", f"{registry.host}/{repo}:v1"
    succeeded(fsnap(root, "pull", "--lazy", ref))
    with Client(root) as client:
        ingest = client.content.ingests.root
    ingest.mkdir(parents=True, exist_ok=True)
    _serves_with_a_refusing_disk(root, ref, tmp_path / "mnt", ingest, "etc/x")


def test_a_chunk_pointing_at_another_files_bytes_gives_eio_not_those_bytes(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    """A TOC (pinned) whose ``etc/x`` chunk offset points at ``usr/y``'s gzip member
    (offsets overlapping, out of order): the read of ``etc/x`` decodes ``usr/y``'s bytes,
    which do not hash to ``etc/x``'s chunk digest: EIO, never those bytes; ``usr/y``
    reads right and the mount serves on."""
    members: Members = [
        (tar_info("etc", tarfile.DIRTYPE, mode=0o755), None),
        (tar_info("etc/x", size=7), b"first!\n"),
        (tar_info("usr", tarfile.DIRTYPE, mode=0o755), None),
        (tar_info("usr/y", size=7), b"second\n"),
    ]

    def overlap(entries: list[dict[str, Any]]) -> None:
        offsets = {e["name"]: e.get("offset") for e in entries}
        for entry in entries:
            if entry["name"] == "etc/x":
                entry["offset"] = offsets["usr/y"]

    repo = "hostile/lazy-overlap"
    registry.push_image(repo, "v1", with_toc(estargz_image(members), overlap))
    root, ref = tmp_path / "root", f"{registry.host}/{repo}:v1"
    succeeded(fsnap(root, "pull", "--lazy", ref))
    with image_mounted(root, ref, tmp_path / "mnt", "--no-background-fetch") as mounted:
        with pytest.raises(OSError) as failed:
            (mounted / "etc/x").read_bytes()
        assert failed.value.errno == errno.EIO
        assert (mounted / "usr/y").read_bytes() == b"second\n"
        with pytest.raises(OSError):
            (mounted / "etc/x").read_bytes()


# Layouts a lazy index keyed by TOC names cannot serve: such a layer is pulled in full.
UNSERVABLE: dict[str, Members] = {
    # ``a`` -> ``sub`` of the same layer: the applier writes ``a/kept`` to ``sub/kept``.
    "file-under-symlinked-dir": [
        (tar_info("sub", tarfile.DIRTYPE, mode=0o755), None),
        (tar_info("a", tarfile.SYMTYPE, linkname="sub"), None),
        (tar_info("a/kept", size=9), b"kept via\n"),
        (tar_info("plain", size=6), b"plain\n"),
    ],
    # ``l`` keeps ``f``'s inode (and bytes) when a later entry makes ``f`` a directory.
    "hardlink-to-replaced-file": [
        (tar_info("f", size=10), b"old bytes\n"),
        (tar_info("l", tarfile.LNKTYPE, linkname="f"), None),
        (tar_info("f", tarfile.DIRTYPE, mode=0o755), None),
        (tar_info("f/inside", size=3), b"in\n"),
    ],
}
# Near misses that stay lazy: a symlinked directory whose files are named by their own
# path, a hardlink whose target stays.
SERVABLE: Members = [
    (tar_info("sub", tarfile.DIRTYPE, mode=0o755), None),
    (tar_info("a", tarfile.SYMTYPE, linkname="sub"), None),
    (tar_info("sub/kept", size=9), b"kept here"),
    (tar_info("f", size=10), b"old bytes\n"),
    (tar_info("l", tarfile.LNKTYPE, linkname="f"), None),
]


def _views(registry: RegistryProcess, tmp_path: Path, repo: str, members: Members) -> str:
    """Push ``members`` as an eStargz image; pull it lazily and in full into two stores and
    assert their mounts show the same tree, bytes included (the lazy mount reading each
    file, no background fetch). Returns the lazy pull's stderr."""
    registry.push_image(repo, "v1", estargz_image(members))
    ref = f"{registry.host}/{repo}:v1"
    lazy_root, full_root = tmp_path / "lazy", tmp_path / "full"
    pulled = fsnap(lazy_root, "pull", "--lazy", ref)
    succeeded(pulled)
    succeeded(fsnap(full_root, "pull", ref))
    with (
        image_mounted(full_root, ref, tmp_path / "full-mnt") as full,
        image_mounted(lazy_root, ref, tmp_path / "mnt", "--no-background-fetch") as lazy,
    ):
        expected = _visible(full_listing(full))
        got = _visible(full_listing(lazy))
    assert got == expected, differences(expected, got, ("full pull", "lazy"))
    return pulled.stderr


def _visible(listing: list[str]) -> list[str]:
    """A listing without what a lazy mount hides (the TOC, the landmarks)."""
    return [line for line in listing if line.split(" ", 1)[0] not in HIDDEN]


@pytest.mark.parametrize("layout", sorted(UNSERVABLE))
def test_a_layout_the_lazy_index_cannot_serve_is_pulled_in_full(
    registry: RegistryProcess, tmp_path: Path, layout: str
) -> None:
    """A layer whose file lands at another path than its TOC name, or whose hardlink
    keeps the bytes of a replaced file, would show empty files in the lazy view: it is
    downloaded and unpacked in full instead (one warning says why), and the lazy mount
    shows what a full pull's does."""
    stderr = _views(registry, tmp_path, f"hostile/lazy-{layout}", UNSERVABLE[layout])
    assert "pulled in full, not lazily" in stderr
    assert not _lazy(tmp_path / "lazy")


def test_a_symlinked_dir_and_a_kept_hardlink_stay_lazy(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    """The near misses of the layouts above are served lazily, and right."""
    stderr = _views(registry, tmp_path, "hostile/lazy-near-miss", SERVABLE)
    assert "pulled in full" not in stderr
    assert _lazy(tmp_path / "lazy")


def test_mount_lazy_pull_pulls_such_a_layer_in_full(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    """``mount --lazy --pull`` (its early blob downloads on, which may hold the blob's
    ingest when the pull comes to it): the layer that cannot be lazy is pulled in full
    and the mount serves its bytes."""
    members = UNSERVABLE["file-under-symlinked-dir"]
    repo = "hostile/lazy-mount-pull-in-full"
    registry.push_image(repo, "v1", estargz_image(members))
    ref, root = f"{registry.host}/{repo}:v1", tmp_path / "root"
    with image_mounted(root, ref, tmp_path / "mnt", "--lazy", "--pull") as mounted:
        assert (mounted / "sub/kept").read_bytes() == b"kept via\n"
        assert (mounted / "a/kept").read_bytes() == b"kept via\n"
        assert (mounted / "plain").read_bytes() == b"plain\n"
    assert not _lazy(root)
