"""Generated images for ``scripts/bench-scale``: many small entries, stored under ``.bench/``.

An image of N entries is a tree ``dNNN/dNNN/`` of directories holding ``FILES_PER_DIR``
entries each: mostly empty regular files, every 10th one with a few bytes, every 50th a
symlink (the figures are about metadata, so contents are kept tiny). The 64-layer variant
holds the same N entries, leaf directories dealt round-robin to the layers, each layer
naming the parents of its directories again (as real images do), so its merged view
equals the one-layer image of the same size.

Tars are streamed to disk and gzip'd from there (a 500,000-entry tar is ~300 MB), with the
same writer layout as ``benchlib.image``: ``blobs/<hex>``, ``manifest.json``, ``image.json``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

from benchlib.image import MTIME, ImageInfo, _add_dir, _ImageWriter, blob_size, load
from fsnap import oci

FILES_PER_DIR = 100
DIRS_PER_TOP = 100
CHUNK = 1 << 20


def image_name(entries: int, layers: int) -> str:
    return f"scale{entries // 1000}k-{layers}l"


def _plan(entries: int) -> Iterator[tuple[str, list[str]]]:
    """(leaf directory, its entry names) until ``entries`` tar entries are planned, counting
    the top directories and leaf directories themselves."""
    left = entries
    leaf = 0
    while left > 0:
        top = f"d{leaf // DIRS_PER_TOP:03d}"
        if leaf % DIRS_PER_TOP == 0:
            left -= 1  # the top directory
        path = f"{top}/d{leaf % DIRS_PER_TOP:03d}"
        left -= 1
        count = max(0, min(FILES_PER_DIR, left))
        left -= count
        yield path, [f"f{i:03d}" for i in range(count)]
        leaf += 1


def _add_entry(tar: tarfile.TarFile, path: str, n: int) -> None:
    info = tarfile.TarInfo(path)
    info.mode, info.mtime = 0o644, MTIME
    if n % 50 == 49:
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, "f000", 0o777
        tar.addfile(info)
        return
    data = f"entry {n}\n".encode() if n % 10 == 0 else b""
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _layer_blob(image_dir: Path, fill_tar: Path) -> dict[str, object]:
    """gzip the tar at ``fill_tar`` into a blob; return the layer's descriptor fields."""
    raw_hash, blob_hash = hashlib.sha256(), hashlib.sha256()
    temp = image_dir / "blobs" / "partial"
    files = data_bytes = 0
    with tarfile.open(fill_tar) as tar:
        for member in tar:
            files += 1
            data_bytes += member.size if member.isreg() else 0
    with (
        open(fill_tar, "rb") as src,
        open(temp, "wb") as out,
        gzip.GzipFile(fileobj=_Hashing(out, blob_hash), mode="wb", compresslevel=1, mtime=0) as gz,
    ):
        while chunk := src.read(CHUNK):
            raw_hash.update(chunk)
            gz.write(chunk)
    digest = "sha256:" + blob_hash.hexdigest()
    os.rename(temp, image_dir / "blobs" / blob_hash.hexdigest())
    fill_tar.unlink()
    return {
        "media_type": oci.OCI_LAYER_GZIP,
        "digest": digest,
        "size": blob_size(image_dir, digest),
        "diff_id": "sha256:" + raw_hash.hexdigest(),
        "files": files,
        "data_bytes": data_bytes,
    }


class _Hashing(io.RawIOBase):
    """A write-only file that hashes what passes through to ``out``."""

    def __init__(self, out: io.BufferedWriter, digest: hashlib._Hash) -> None:
        self.out, self.digest = out, digest

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.digest.update(data)
        return self.out.write(data)


def build(images_dir: Path, entries: int, layers: int) -> ImageInfo:
    name = image_name(entries, layers)
    writer = _ImageWriter(images_dir, name)
    image_dir = writer.dir
    plan = list(_plan(entries))
    for k in range(layers):
        path = image_dir / f"layer{k}.tar"
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            tops_named: set[str] = set()
            n = 0
            for leaf_no, (leaf, names) in enumerate(plan):
                if leaf_no % layers != k:
                    continue
                top = leaf.split("/")[0]
                if top not in tops_named:
                    tops_named.add(top)
                    _add_dir(tar, top)
                _add_dir(tar, leaf)
                for entry in names:
                    _add_entry(tar, f"{leaf}/{entry}", n)
                    n += 1
        writer.layers.append(_layer_blob(image_dir, path))
    return writer.finish()


def ensure(images_dir: Path, entries: int, layers: int) -> ImageInfo:
    """The image, generated the first time and reused after."""
    found = load(images_dir, image_name(entries, layers))
    if found is not None:
        return found
    print(f"bench: generating {image_name(entries, layers)} (once)", flush=True)
    return build(images_dir, entries, layers)
