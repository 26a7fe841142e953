"""The inspect tests' image: three layers with adds, modifications, whiteouts and an opaque
directory, pushed to a real registry and pulled (and unpacked) by the real CLI.

Layer 0 (base): /etc/{motd 6 B, passwd 11 B}, /opt/old.txt 100 B, /tmp/big.dat 10000 B,
  /usr/bin/tool 500 B, /var/cache/{a.bin 1000 B, b.bin 2000 B}, with their directories.
Layer 1: /etc/motd modified (12 B), /etc/hosts added (20 B), whiteouts of /tmp/big.dat and
  of the directory /var/cache; /etc, /tmp, /var listed again unchanged.
Layer 2: /opt made opaque with /opt/new.txt (50 B) (hides /opt/old.txt), /usr/bin/tool
  modified (600 B), /usr/bin/t a symlink to tool, /srv/data (30 B) in a new /srv.
The config's history has an empty layer (ENV) between layers 0 and 1.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

from image_builder import Blob, Image, make_layer, tar_info

from fsnap import oci
from support.cli import fsnap, succeeded

DIR = tarfile.DIRTYPE

HISTORY: list[dict[str, str | bool]] = [
    {"created": "2026-01-01T00:00:00Z", "created_by": "ADD base.tar /"},
    {"created": "2026-01-01T00:00:01Z", "created_by": "ENV A=1", "empty_layer": True},
    {"created": "2026-01-01T00:00:02Z", "created_by": "RUN update etc, clean tmp and cache"},
    {
        "created": "2026-01-01T00:00:03Z",
        "created_by": "RUN replace opt, new tool",
        "comment": "top",
    },
]
RUNTIME = {
    "Entrypoint": ["/usr/bin/tool"],
    "Cmd": ["--help"],
    "Env": ["A=1"],
    "WorkingDir": "/srv",
    "User": "1000:1000",
    "ExposedPorts": {"8080/tcp": {}},
    "Labels": {"org.example": "inspect"},
}


def _file(
    path: str, size: int, fill: bytes = b"x", mode: int = 0o644
) -> tuple[tarfile.TarInfo, bytes]:
    data = (fill * size)[:size]
    return tar_info(path, size=size, mode=mode), data


def _dir(path: str) -> tuple[tarfile.TarInfo, None]:
    return tar_info(path, DIR, mode=0o755), None


def _whiteout(path: str) -> tuple[tarfile.TarInfo, bytes]:
    return tar_info(path), b""


def layer_members() -> list[list[tuple[tarfile.TarInfo, bytes | None]]]:
    base: list[tuple[tarfile.TarInfo, bytes | None]] = [
        _dir("etc"),
        (tar_info("etc/motd", size=6), b"hello\n"),
        (tar_info("etc/passwd", size=11), b"root:x:0:0\n"),
        _dir("opt"),
        _file("opt/old.txt", 100, b"o"),
        _dir("tmp"),
        _file("tmp/big.dat", 10000, b"b"),
        _dir("usr"),
        _dir("usr/bin"),
        _file("usr/bin/tool", 500, b"1", 0o755),
        _dir("var"),
        _dir("var/cache"),
        _file("var/cache/a.bin", 1000, b"a"),
        _file("var/cache/b.bin", 2000, b"c"),
    ]
    update: list[tuple[tarfile.TarInfo, bytes | None]] = [
        _dir("etc"),
        (tar_info("etc/motd", size=12), b"hello again\n"),
        (tar_info("etc/hosts", size=20), b"127.0.0.1 localhost\n"),
        _dir("tmp"),
        _whiteout("tmp/.wh.big.dat"),
        _dir("var"),
        _whiteout("var/.wh.cache"),
    ]
    top: list[tuple[tarfile.TarInfo, bytes | None]] = [
        _dir("opt"),
        _whiteout("opt/.wh..wh..opq"),
        _file("opt/new.txt", 50, b"n"),
        _dir("usr"),
        _dir("usr/bin"),
        _file("usr/bin/tool", 600, b"2", 0o755),
        (tar_info("usr/bin/t", tarfile.SYMTYPE, mode=0o777, linkname="tool"), None),
        _dir("srv"),
        _file("srv/data", 30, b"d"),
    ]
    return [base, update, top]


def inspect_image() -> Image:
    layers = [make_layer(members) for members in layer_members()]
    config = {
        "architecture": oci.Platform.host().architecture,
        "os": "linux",
        "config": RUNTIME,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": HISTORY,
    }
    config_blob = Blob(oci.OCI_CONFIG, json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": oci.OCI_MANIFEST,
        "config": config_blob.descriptor().to_json(),
        "layers": [layer.blob.descriptor().to_json() for layer in layers],
    }
    manifest_blob = Blob(oci.OCI_MANIFEST, json.dumps(manifest).encode())
    return Image(manifest_blob, config_blob, tuple(layers), oci.Platform.host())


def fsnap_json(root: Path, *args: str) -> dict[str, Any]:
    doc = json.loads(succeeded(fsnap(root, *args, "--json")))
    assert isinstance(doc, dict)
    return doc
