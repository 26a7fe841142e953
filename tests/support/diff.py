"""A layer with every kind of entry, for the diff tests (scan, tar writer, commit, push)."""

from __future__ import annotations

import io
from pathlib import Path

from fsnap.archive.apply import ApplyResult, apply_layer
from fsnap.archive.entry import Entry
from support.tar import TarBuilder, binary_str

# vfs capability v2: 0xc0 makes the value invalid UTF-8, a binary xattr
CAPABILITY = b"\x01\x00\x00\x02\xc0\x00\x00\x00" + b"\x00" * 12
XATTRS = {"user.note": b"\xff\x00binary", "trusted.t": b"tv", "security.capability": CAPABILITY}
LONG_DIR = "d" * 120
NON_UTF8 = binary_str(b"caf\xe9")


def rich_layer() -> bytes:
    """Every kind: files with xattrs and setuid/setgid/sticky, big owners, sub-second mtimes,
    dirs, symlinks, a hard link, devices, a fifo, a whiteout, an opaque dir, a long and a
    non-UTF-8 name. Every parent is named, so no entry is implicit."""
    return (
        TarBuilder()
        .dir("bin", 0o755, mtime="1700000001.5")
        .file("bin/tool", b"#!/bin/sh\necho hi\n", 0o4755, uid=1234, gid=5678, xattrs=XATTRS)
        .hardlink("bin/tool2", "bin/tool")
        .symlink("bin/sh", "busybox")
        .file("bin/sgid", b"g", 0o2711, mtime="1700000002.000000001")
        .dir("tmp", 0o1777)
        .dir("dev", 0o755)
        .char("dev/null", 1, 3)
        .block("dev/loop0", 7, 0)
        .fifo("dev/fifo", 0o600)
        .dir("etc", 0o750, uid=3_000_000, gid=4_000_000, xattrs={"user.dir": b"d"})
        .file("etc/empty")
        .whiteout("etc/removed")
        .dir("var", 0o755)
        .dir("var/cache", 0o700, uid=33, gid=33)
        .opaque("var/cache")
        .file("var/cache/kept", b"k" * 5000)
        .dir(LONG_DIR)
        .file(f"{LONG_DIR}/{'f' * 100}", b"long")
        .file(NON_UTF8, b"\xe9")
        .data()
    )


def apply_bytes(data: bytes, root: Path, *, privileged: bool | None = None) -> ApplyResult:
    root.mkdir(parents=True, exist_ok=True)
    return apply_layer(io.BytesIO(data), root, privileged=privileged, sync=False)


def by_path(entries: list[Entry]) -> dict[str, Entry]:
    found = {e.path: e for e in entries}
    assert len(found) == len(entries), "one entry per path"
    return found
