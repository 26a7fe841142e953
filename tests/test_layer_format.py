"""fsnap.archive.format: the layer format's names and markers, written and read back by the
same module (what the applier, the scanner, the mount and fsnap-overlay all rely on)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fsnap.archive.entry import Kind
from fsnap.archive.format import (
    KIND_BITS,
    NAME_MAX,
    OPAQUE_MARKER,
    WHITEOUT_PREFIX,
    LayerMarkers,
    OverlayMarkers,
    has_opaque_marker,
    has_overlay_opaque,
    has_whiteout,
    is_whiteout_device,
    kind_of_mode,
)


@pytest.mark.parametrize("kind", [kind for kind in KIND_BITS if kind != "hardlink"])
def test_kind_and_mode_map_both_ways(kind: Kind) -> None:
    assert kind_of_mode(KIND_BITS[kind] | 0o4755) == kind


def test_unknown_file_type_is_a_file() -> None:
    assert kind_of_mode(0) == "file"
    assert KIND_BITS["hardlink"] == stat.S_IFREG


def test_longest_name_with_a_whiteout() -> None:
    longest = b"n" * (NAME_MAX - len(WHITEOUT_PREFIX))
    assert has_whiteout(longest)
    assert not has_whiteout(longest + b"n")


def _dir_fd(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)


def test_layer_markers_written_then_read(tmp_path: Path) -> None:
    markers = LayerMarkers()
    root = os.fsencode(tmp_path)
    markers.whiteout(root, b"gone")
    markers.mark_opaque(root)
    assert sorted(os.listdir(tmp_path)) == sorted([WHITEOUT_PREFIX + "gone", OPAQUE_MARKER])
    fd = _dir_fd(tmp_path)
    try:
        assert has_opaque_marker(fd)
        assert not has_overlay_opaque(fd)
    finally:
        os.close(fd)
    markers.unwhiteout(root, b"gone")
    markers.unwhiteout(root, b"x" * NAME_MAX)  # no whiteout can exist: nothing to do
    assert os.listdir(tmp_path) == [OPAQUE_MARKER]


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod and trusted.* xattrs need root")
def test_overlay_markers_privileged_and_either_form_removed(tmp_path: Path) -> None:
    markers = OverlayMarkers(privileged=True)
    root = os.fsencode(tmp_path)
    markers.whiteout(root, b"dev")
    assert is_whiteout_device(os.lstat(tmp_path / "dev"))
    assert not is_whiteout_device(os.lstat(tmp_path))
    markers.mark_opaque(root)
    fd = _dir_fd(tmp_path)
    try:
        assert has_overlay_opaque(fd)
        assert not has_opaque_marker(fd)
    finally:
        os.close(fd)
    LayerMarkers().whiteout(root, b"file")  # the OCI form, written by another writer
    markers.unwhiteout(root, b"dev")
    markers.unwhiteout(root, b"file")
    assert os.listdir(tmp_path) == []
