"""Seekable (eStargz, zstd:chunked) images for the lazy-pull tests, made by real tools.

``ctr_remote_convert`` pulls an image from the test registry into the oracle containerd,
converts it with Debian's ``ctr-remote image convert`` (package ``stargz-snapshotter``) and
pushes the result back: real eStargz / stargz-style zstd:chunked blobs, annotations and all.
``fetch_manifest`` / ``fetch_blob`` read them back over the registry API.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from image_builder import Image, tar_info

from fsnap import oci
from support.containerd import ContainerdUnavailable, Ctr, run_containerd
from support.needs import unavailable
from support.registry import RegistryProcess

CTR_REMOTE = Path("/usr/bin/ctr-remote")
MANIFEST_ACCEPT = ", ".join((oci.OCI_MANIFEST, oci.DOCKER_MANIFEST))


def ctr_remote(ctr: Ctr, *args: str) -> str:
    """``ctr-remote ARGS`` against ``ctr``'s containerd (300 s at most); its stdout."""
    return ctr.client(CTR_REMOTE, *args, timeout=300).stdout


def ctr_remote_convert(ctr: Ctr, src: str, dst: str, *, zstd: bool = False) -> None:
    """``src`` (in a plain-HTTP registry) converted by ctr-remote and pushed as ``dst``."""
    ctr.run("images", "pull", "--plain-http", src)
    kind = ["--zstdchunked"] if zstd else ["--estargz"]
    ctr_remote(ctr, "image", "convert", *kind, "--oci", src, dst)
    ctr.run("images", "push", "--plain-http", dst)


def fetch_manifest(registry_url: str, repo: str, tag: str) -> dict[str, Any]:
    response = httpx.get(
        f"{registry_url}/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT}
    )
    response.raise_for_status()
    return json.loads(response.content)  # type: ignore[no-any-return]


def fetch_blob(registry_url: str, repo: str, digest: str) -> bytes:
    response = httpx.get(f"{registry_url}/v2/{repo}/blobs/{digest}", follow_redirects=True)
    response.raise_for_status()
    return response.content


def varied_members(nonce: bytes = b"") -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """Every kind a TOC describes: dirs, files (empty, small, one of several MiB that
    eStargz chunks), a symlink, a hardlink, a fifo, a whiteout and an opaque marker.

    ``nonce`` goes into ``etc/nonce``: skopeo's blob-info cache (shared by every run on the
    machine) would otherwise reuse a zstd blob of the same content pushed before, without
    its zstd:chunked annotations."""
    big = bytes(range(256)) * (5 * 4096 + 7)  # 5 MiB + a bit: more than one 4 MiB chunk
    members: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (tar_info("etc", tarfile.DIRTYPE, mode=0o755), None),
        (tar_info("etc/hostname", size=6), b"lazy1\n"),
        (tar_info("etc/nonce", size=len(nonce)), nonce),
        (tar_info("etc/empty"), b""),
        (tar_info("usr", tarfile.DIRTYPE, mode=0o755), None),
        (tar_info("usr/big.bin", mode=0o640, size=len(big)), big),
        (tar_info("usr/link", tarfile.SYMTYPE, linkname="big.bin"), None),
        (tar_info("usr/hard", tarfile.LNKTYPE, linkname="usr/big.bin"), None),
        (tar_info("usr/fifo", tarfile.FIFOTYPE, mode=0o600), None),
        (tar_info("var", tarfile.DIRTYPE, mode=0o755), None),
        (tar_info("var/.wh.gone"), b""),
        (tar_info("opt", tarfile.DIRTYPE, mode=0o700), None),
        (tar_info("opt/.wh..wh..opq"), b""),
    ]
    return members


# The tags ``converted`` pushes, and the formats they hold.
CONVERSIONS = {"esgz": "estargz", "zstd": "zstd:chunked", "skopeo": "zstd:chunked"}


def skopeo_zstd_chunked(src: str, dst: str, work: Path) -> None:
    """``src`` recompressed as zstd:chunked by Debian's skopeo (containers/image), by way
    of ``dir:`` copies under ``work``: registry to registry, skopeo reuses a blob the
    destination already has (the source's own gzip one) instead of recompressing it."""
    plain, chunked = work / "plain", work / "chunked"
    work.mkdir(parents=True, exist_ok=True)
    for argv in (
        ["--src-tls-verify=false", f"docker://{src}", f"dir:{plain}"],
        [
            "--dest-compress",
            "--dest-compress-format",
            "zstd:chunked",
            f"dir:{plain}",
            f"dir:{chunked}",
        ],
        ["--dest-tls-verify=false", f"dir:{chunked}", f"docker://{dst}"],
    ):
        done = subprocess.run(
            ["skopeo", "copy", *argv], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"skopeo copy {argv}: {done.stderr}"


@contextlib.contextmanager
def converted(
    registry: RegistryProcess, base: Path, repo: str, image: Image
) -> Iterator[dict[str, str]]:
    """Push ``image`` as ``repo:src``, then as ``repo:esgz`` / ``repo:zstd`` (ctr-remote,
    through a private containerd) and ``repo:skopeo``; yields tag -> reference. Skips (fails
    under CI) when containerd cannot run here."""
    registry.push_image(repo, "src", image)
    src = f"{registry.host}/{repo}:src"
    refs = {tag: f"{registry.host}/{repo}:{tag}" for tag in ("src", *CONVERSIONS)}
    try:
        with run_containerd(base) as ctr:
            ctr_remote_convert(ctr, src, refs["esgz"])
            ctr_remote_convert(ctr, src, refs["zstd"], zstd=True)
    except ContainerdUnavailable as exc:
        unavailable(f"containerd cannot run here: {exc}")
    skopeo_zstd_chunked(src, refs["skopeo"], base / "skopeo")
    yield refs
