"""Helpers for the unpack tests: a 3-layer image exercising the layer semantics, what each
layer's index and directory must hold, and views of what a pull left in the snapshotter."""

from __future__ import annotations

import tarfile
from collections.abc import Mapping
from pathlib import Path

from fsnap.archive.entry import Entry
from fsnap.client import Client
from fsnap.oci import Platform
from fsnap.snapshots.info import Info, Kind
from support.registry import Image, Layer, make_image, make_layer, tar_info

HOST = Platform.host()
D, F, L, S = tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.LNKTYPE, tarfile.SYMTYPE


def _file(
    name: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0
) -> tuple[tarfile.TarInfo, bytes]:
    return tar_info(name, F, mode=mode, size=len(data), uid=uid, gid=gid), data


def three_layers() -> list[Layer]:
    """Base; then modify + whiteout + opaque dir; then hardlink, symlink, sticky dir and a
    file under a directory only a lower layer names (implicit: takes the lower's owner)."""
    base = make_layer(
        [
            (tar_info("etc", D, mode=0o755), None),
            _file("etc/a", b"alpha\n", mode=0o640, uid=1000, gid=1001),
            (tar_info("etc/hard", L, linkname="etc/a", mode=0o640, uid=1000, gid=1001), None),
            (tar_info("etc/link", S, mode=0o777, linkname="a"), None),
            (tar_info("usr", D, mode=0o755), None),
            (tar_info("usr/bin", D, mode=0o755), None),
            _file("usr/bin/tool", b"#!/bin/sh\n", mode=0o4755),
            (tar_info("opt", D, mode=0o755), None),
            (tar_info("opt/keep", D, mode=0o750), None),
            _file("opt/keep/x", b"x\n"),
            (tar_info("var", D, mode=0o755), None),
            (tar_info("var/lib", D, mode=0o700, uid=5, gid=6), None),
            _file("var/lib/old", b"old\n"),
        ]
    )
    change = make_layer(
        [
            _file("etc/a", b"alpha v2\n", mode=0o600),
            _file("usr/.wh.bin", b""),
            _file("opt/keep/.wh..wh..opq", b""),
            _file("opt/keep/y", b"y\n"),
        ],
        compression="zstd",
    )
    links = make_layer(
        [
            (tar_info("data", D, mode=0o1777), None),
            _file("data/f", b"f\n", mode=0o2755, uid=7, gid=8),
            (tar_info("data/g", L, linkname="data/f", mode=0o2755, uid=7, gid=8), None),
            (tar_info("data/s", S, mode=0o777, linkname="f"), None),
            _file("var/lib/new", b"new\n"),
        ],
        compression="none",
    )
    return [base, change, links]


def three_layer_image() -> Image:
    return make_image(three_layers(), platform=HOST)


# What each layer's index must say: path -> (kind, mode, uid, gid, link, opaque, implicit).
Row = tuple[str, int, int, int, str, bool, bool]
EXPECTED_INDEX: list[dict[str, Row]] = [
    {
        "etc": ("dir", 0o755, 0, 0, "", False, False),
        "etc/a": ("file", 0o640, 1000, 1001, "", False, False),
        "etc/hard": ("hardlink", 0o640, 1000, 1001, "etc/a", False, False),
        "etc/link": ("symlink", 0o777, 0, 0, "a", False, False),
        "usr": ("dir", 0o755, 0, 0, "", False, False),
        "usr/bin": ("dir", 0o755, 0, 0, "", False, False),
        "usr/bin/tool": ("file", 0o4755, 0, 0, "", False, False),
        "opt": ("dir", 0o755, 0, 0, "", False, False),
        "opt/keep": ("dir", 0o750, 0, 0, "", False, False),
        "opt/keep/x": ("file", 0o644, 0, 0, "", False, False),
        "var": ("dir", 0o755, 0, 0, "", False, False),
        "var/lib": ("dir", 0o700, 5, 6, "", False, False),
        "var/lib/old": ("file", 0o644, 0, 0, "", False, False),
    },
    {
        "etc": ("dir", 0o755, 0, 0, "", False, True),
        "etc/a": ("file", 0o600, 0, 0, "", False, False),
        "usr": ("dir", 0o755, 0, 0, "", False, True),
        "usr/bin": ("whiteout", -1, -1, -1, "", False, False),
        "opt": ("dir", 0o755, 0, 0, "", False, True),
        "opt/keep": ("dir", 0o750, 0, 0, "", True, True),
        "opt/keep/y": ("file", 0o644, 0, 0, "", False, False),
    },
    {
        "data": ("dir", 0o1777, 0, 0, "", False, False),
        "data/f": ("file", 0o2755, 7, 8, "", False, False),
        "data/g": ("hardlink", 0o2755, 7, 8, "data/f", False, False),
        "data/s": ("symlink", 0o777, 0, 0, "f", False, False),
        "var": ("dir", 0o755, 0, 0, "", False, True),
        "var/lib": ("dir", 0o700, 5, 6, "", False, True),
        "var/lib/new": ("file", 0o644, 0, 0, "", False, False),
    },
]

# What each layer's directory holds on disk (markers included).
EXPECTED_FILES: list[set[str]] = [
    set(EXPECTED_INDEX[0]),
    {
        "etc",
        "etc/a",
        "usr",
        "usr/.wh.bin",
        "opt",
        "opt/keep",
        "opt/keep/.wh..wh..opq",
        "opt/keep/y",
    },
    set(EXPECTED_INDEX[2]),
]


def index_rows(entries: list[Entry]) -> dict[str, Row]:
    rows: dict[str, Row] = {}
    for e in entries:
        if e.kind == "whiteout":
            rows[e.path] = ("whiteout", -1, -1, -1, "", False, False)
        else:
            rows[e.path] = (e.kind, e.mode, e.uid, e.gid, e.link, e.opaque, e.implicit)
    return rows


def files_under(top: Path) -> set[str]:
    return {str(p.relative_to(top)) for p in top.rglob("*")}


def snapshots(root: Path) -> dict[str, Info]:
    with Client(root) as client:
        return {info.name: info for info in client.snapshots.walk()}


def committed(root: Path) -> dict[str, Info]:
    return {k: v for k, v in snapshots(root).items() if v.kind is Kind.COMMITTED}


def labels_of(root: Path, digest: str) -> Mapping[str, str]:
    with Client(root) as client:
        return client.content.info(digest).labels
