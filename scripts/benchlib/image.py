"""The benchmark images, built from the cached root filesystem and stored under ``.bench/``.

``rootfs`` (the main image) splits the tree into layers the way real images stack:
base system / shared libraries / python3, then a data layer that adds incompressible
files (so the image is >= 100 MB gzip'd), rewrites some files and deletes others (whiteouts
and an opaque directory). ``layers128`` stacks 128 small layers whose files share one
directory, and ``layers1`` holds the same files in one layer: the lookup figure compares them.

Each image is written as ``.bench/images/<name>/`` with ``blobs/<hex>``, ``manifest.json``
and ``image.json`` (what the scripts print: sizes, counts, diff IDs).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from fsnap import oci
from fsnap.digest import chain_id

MTIME = 1_700_000_000
EXTRA_RANDOM = 72 << 20  # incompressible bytes in the data layer
SMALL_FILES = 1500  # small text files in the data layer
LOOKUP_FILES = 1280  # files in the shared directory of the lookup images
Select = Callable[[str], bool]


@dataclass
class ImageInfo:
    """What a benchmark needs to know about a stored image."""

    name: str
    layers: list[dict[str, object]]  # media_type, digest, size, diff_id, files, data_bytes
    manifest_digest: str
    config_digest: str

    @property
    def compressed(self) -> int:
        return sum(int(str(layer["size"])) for layer in self.layers)

    @property
    def files(self) -> int:
        return sum(int(str(layer["files"])) for layer in self.layers)

    @property
    def data_bytes(self) -> int:
        return sum(int(str(layer["data_bytes"])) for layer in self.layers)

    @property
    def diff_ids(self) -> list[str]:
        return [str(layer["diff_id"]) for layer in self.layers]

    @property
    def top_chain_id(self) -> str:
        return chain_id(self.diff_ids)

    def summary(self) -> str:
        return (
            f"{self.name}: {len(self.layers)} layers, {self.compressed / 1e6:.1f} MB gzip, "
            f"{self.files} tar entries, {self.data_bytes / 1e6:.1f} MB of file data"
        )


def load(images_dir: Path, name: str) -> ImageInfo | None:
    path = images_dir / name / "image.json"
    if not path.is_file():
        return None
    return ImageInfo(**json.loads(path.read_text()))


def blob_path(images_dir: Path, name: str, digest: str) -> Path:
    return images_dir / name / "blobs" / digest.split(":", 1)[1]


# --- building --------------------------------------------------------------------------


class _ImageWriter:
    """Collects gzip'd layer tars into ``<dir>/blobs`` and writes config and manifest."""

    def __init__(self, images_dir: Path, name: str) -> None:
        self.name = name
        self.dir = images_dir / name
        (self.dir / "blobs").mkdir(parents=True, exist_ok=True)
        self.layers: list[dict[str, object]] = []

    def layer(self, fill: Callable[[tarfile.TarFile], None]) -> None:
        """Write one layer: ``fill`` adds members to an uncompressed PAX tar."""
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            fill(tar)
            members = tar.getmembers()
        tar_bytes = raw.getvalue()
        blob = gzip.compress(tar_bytes, compresslevel=6, mtime=0)
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        (self.dir / "blobs" / digest.split(":", 1)[1]).write_bytes(blob)
        self.layers.append(
            {
                "media_type": oci.OCI_LAYER_GZIP,
                "digest": digest,
                "size": len(blob),
                "diff_id": "sha256:" + hashlib.sha256(tar_bytes).hexdigest(),
                "files": len(members),
                "data_bytes": sum(m.size for m in members if m.isreg()),
            }
        )

    def finish(self) -> ImageInfo:
        config = {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/usr/bin/python3"], "Env": ["PATH=/usr/bin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [layer["diff_id"] for layer in self.layers]},
        }
        config_digest = self._blob(json.dumps(config, sort_keys=True).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": oci.OCI_MANIFEST,
            "config": {
                "mediaType": oci.OCI_CONFIG,
                "digest": config_digest,
                "size": blob_size(self.dir, config_digest),
            },
            "layers": [
                {"mediaType": layer["media_type"], "digest": layer["digest"], "size": layer["size"]}
                for layer in self.layers
            ],
        }
        manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
        (self.dir / "manifest.json").write_bytes(manifest_bytes)
        info = ImageInfo(
            self.name,
            self.layers,
            "sha256:" + hashlib.sha256(manifest_bytes).hexdigest(),
            config_digest,
        )
        (self.dir / "image.json").write_text(json.dumps(asdict(info), indent=1))
        return info

    def _blob(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        (self.dir / "blobs" / digest.split(":", 1)[1]).write_bytes(data)
        return digest


def blob_size(image_dir: Path, digest: str) -> int:
    return (image_dir / "blobs" / digest.split(":", 1)[1]).stat().st_size


def _walk(root: Path) -> Iterator[str]:
    """Every path under ``root``, relative, parents before children, sorted."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        if rel != ".":
            yield rel
        for name in sorted(filenames):
            yield os.path.normpath(os.path.join(rel, name))
        # os.walk does not descend into symlinked dirs; they are listed in dirnames
        for name in [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            dirnames.remove(name)
            yield os.path.normpath(os.path.join(rel, name))


def _add_tree(tar: tarfile.TarFile, root: Path, keep: Select) -> None:
    for rel in _walk(root):
        if keep(rel):
            tar.add(root / rel, arcname=rel, recursive=False)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def _is_python(path: str) -> bool:
    return any(_under(path, p) for p in ("usr/lib/python3", "usr/lib/python3.11"))


def build_rootfs_image(images_dir: Path, rootfs: Path) -> ImageInfo:
    """base system / usr/lib / python3 / data (adds, rewrites, deletes)."""
    out = _ImageWriter(images_dir, "rootfs")
    out.layer(lambda t: _add_tree(t, rootfs, lambda p: not _under(p, "usr/lib") or p == "usr/lib"))
    out.layer(
        lambda t: _add_tree(
            t, rootfs, lambda p: _under(p, "usr/lib") and p != "usr/lib" and not _is_python(p)
        )
    )
    out.layer(lambda t: _add_tree(t, rootfs, _is_python))
    out.layer(lambda t: _data_layer(t, rootfs))
    return out.finish()


def _data_layer(tar: tarfile.TarFile, rootfs: Path) -> None:
    rng = random.Random(42)
    _add_dir(tar, "opt/bench")
    chunk = 8 << 20
    for i in range(EXTRA_RANDOM // chunk):
        _add_file(tar, f"opt/bench/blob-{i:02d}.bin", rng.randbytes(chunk))
    _add_dir(tar, "opt/bench/small")
    for i in range(SMALL_FILES):
        _add_file(tar, f"opt/bench/small/note-{i:04d}.txt", f"note {i}\n".encode() * (i % 50 + 1))
    # Rewrites of lower files, deletions (whiteouts) and an opaque directory.
    _add_file(tar, "etc/motd", b"fsnap benchmark image\n")
    _add_file(tar, "etc/hostname", b"bench\n")
    docs = sorted(p.name for p in (rootfs / "usr/share/doc").iterdir())[:40]
    for name in docs:
        _add_file(tar, f"usr/share/doc/.wh.{name}", b"")
    _add_file(tar, "usr/share/man/.wh..wh..opq", b"")
    _add_file(tar, "usr/share/man/README", b"manual pages removed by the benchmark image\n")


def _add_dir(tar: tarfile.TarFile, path: str) -> None:
    info = tarfile.TarInfo(path)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, MTIME
    tar.addfile(info)


def _add_file(tar: tarfile.TarFile, path: str, data: bytes) -> None:
    info = tarfile.TarInfo(path)
    info.size, info.mode, info.mtime = len(data), 0o644, MTIME
    tar.addfile(info, io.BytesIO(data))


def build_lookup_images(images_dir: Path) -> tuple[ImageInfo, ImageInfo]:
    """``layers128`` and ``layers1``: the same ``data/f*`` files over 128 layers or one."""

    def content(j: int) -> bytes:
        return f"file {j}\n".encode()

    deep = _ImageWriter(images_dir, "layers128")
    for i in range(128):

        def fill(tar: tarfile.TarFile, i: int = i) -> None:
            _add_dir(tar, "data")
            _add_dir(tar, f"layer{i:03d}")
            _add_file(tar, f"layer{i:03d}/marker", content(i))
            for j in range(i, LOOKUP_FILES, 128):
                _add_file(tar, f"data/f{j:04d}", content(j))

        deep.layer(fill)

    def flat_fill(tar: tarfile.TarFile) -> None:
        _add_dir(tar, "data")
        for i in range(128):
            _add_dir(tar, f"layer{i:03d}")
            _add_file(tar, f"layer{i:03d}/marker", content(i))
        for j in range(LOOKUP_FILES):
            _add_file(tar, f"data/f{j:04d}", content(j))

    flat = _ImageWriter(images_dir, "layers1")
    flat.layer(flat_fill)
    return deep.finish(), flat.finish()


def lookup_paths(count: int = 1000) -> list[str]:
    """The paths the lookup figure stats: spread over every layer of ``layers128``."""
    return [f"data/f{j:04d}" for j in range(count)]


def ensure_images(cache: Path, rootfs: Path) -> dict[str, ImageInfo]:
    """The three images, built the first time (about a minute) and reused after."""
    images_dir = cache / "images"
    found = {name: load(images_dir, name) for name in ("rootfs", "layers128", "layers1")}
    if found["rootfs"] is None:
        print("bench: building the rootfs image (once)", flush=True)
        found["rootfs"] = build_rootfs_image(images_dir, rootfs)
    if found["layers128"] is None or found["layers1"] is None:
        print("bench: building the 128-layer and 1-layer lookup images (once)", flush=True)
        found["layers128"], found["layers1"] = build_lookup_images(images_dir)
    return {name: info for name, info in found.items() if info is not None}
