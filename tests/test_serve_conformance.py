"""containerd's snapshotter conformance cases over gRPC: ``fsnap serve`` + its client.

The cases of ``test_snapshots`` (ported from containerd's core/snapshots/testsuite) run
unchanged against ``RemoteSnapshotter``, so every verb, label, filter and error crosses
the wire and comes back as the same typed error. The cases that write files do it as
containerd's suite does: through the mounts the server returns (bind mounts and
``fsnap-overlay`` mounts, really mounted), checked against the same changes applied to a
plain directory.
"""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import test_snapshots as suite
from support.serve import mounted, run_serve
from support.snapshot import Conformant, CreateDir, CreateFile, Op, apply_flat, tree_state

from fsnap.errors import FailedPrecondition
from fsnap.serve.backend import OVERLAY_TYPE, Mount
from fsnap.serve.client import RemoteSnapshotter
from fsnap.snapshots import Kind, Snapshotter

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_fuse]


@pytest.fixture
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemoteSnapshotter]:
    base = tmp_path_factory.mktemp("serve")
    with run_serve(base / "root", base / "run" / "fsnap.sock", base / "serve.log") as served:
        client = RemoteSnapshotter(served.address)
        try:
            yield client
        finally:
            client.close()


def mounted_check_layers(
    snapshotter: RemoteSnapshotter, work: Path, layers: Sequence[Sequence[Op]]
) -> str:
    """containerd's ``checkSnapshots`` through real mounts: each layer is written through
    the active snapshot's mount, committed, and a view of it mounted and compared with
    the same changes applied to a flat directory."""
    flat = work / "flat"
    flat.mkdir()
    flat.chmod(0o755)
    parent = ""
    for index, ops in enumerate(layers):
        key = f"layer-{index}-active"
        with mounted(snapshotter.prepare(key, parent), work / f"active-{index}") as active:
            assert tree_state(active) == tree_state(flat), f"layer {index}: parent differs"
            apply_flat(active, ops)
        apply_flat(flat, ops)
        parent = f"layer-{index}"
        snapshotter.commit(parent, key)
        view_key = f"layer-{index}-view"
        with mounted(snapshotter.view(view_key, parent), work / f"view-{index}") as view:
            assert tree_state(view) == tree_state(flat), f"layer {index}: view differs"
        snapshotter.remove(view_key)
    return parent


def mounted_materialise(snapshotter: RemoteSnapshotter, key: str, dest: Path) -> Path:
    """A copy (owners kept) of what ``key``'s mounts show."""
    with mounted(snapshotter.mounts(key), dest.with_name(dest.name + "-mnt")) as mnt:
        subprocess.run(["cp", "-a", f"{mnt}/.", str(dest)], check=True)
    return dest


METADATA_CASES: list[Callable[..., None]] = [
    suite.test_long_chain_transitivity,
    suite.test_prepare_view_same_key_fails,
    suite.test_view_and_prepare_need_a_committed_parent,
    suite.test_remove_then_reuse_key,
    suite.test_stat_in_walk,
    suite.test_remove_intermediate_snapshot_refused,
]
LAYER_CASES: list[Callable[..., None]] = [
    suite.test_basic,
    suite.test_transitivity,
    suite.test_layer_file_update,
    suite.test_remove_directory_in_lower_layer,
    suite.test_deleted_files_in_child,
    suite.test_move_file_from_lower_layer,
    suite.test_rename,
]


def test_remote_snapshotter_is_a_snapshotter(remote: RemoteSnapshotter) -> None:
    contract: Snapshotter[list[Mount]] = remote  # (mypy checks every verb's signature here)
    assert isinstance(contract, Snapshotter)  # (and this that every verb is there)
    conformant: Conformant = remote
    assert callable(conformant.chain)


@pytest.mark.parametrize("case", METADATA_CASES, ids=lambda c: c.__name__)
def test_metadata_case(remote: RemoteSnapshotter, case: Callable[[Any], None]) -> None:
    case(remote)


@pytest.mark.parametrize(("name", "kind", "parent"), suite.UPDATE_CASES)
def test_update_labels(remote: RemoteSnapshotter, name: str, kind: Kind, parent: str) -> None:
    suite.test_update_labels(remote, name, kind, parent)


@pytest.mark.parametrize(("matches", "filters"), suite.WALK_CASES)
def test_walk_filters(remote: RemoteSnapshotter, matches: list[str], filters: list[str]) -> None:
    suite.test_walk_filters(remote, matches, filters)


@pytest.mark.parametrize("case", LAYER_CASES, ids=lambda c: c.__name__)
def test_layer_case_through_mounts(
    remote: RemoteSnapshotter,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    case: Callable[[Any, Path], None],
) -> None:
    monkeypatch.setattr(suite, "check_layers", mounted_check_layers)
    monkeypatch.setattr(suite, "materialise", mounted_materialise)
    work = tmp_path / "work"
    work.mkdir()
    case(remote, work)


def test_view_mount_is_read_only(remote: RemoteSnapshotter, tmp_path: Path) -> None:
    top = mounted_check_layers(
        remote, tmp_path, [[CreateFile("/a", b"a\n")], [CreateFile("/b", b"b\n")]]
    )
    mounts = remote.view("view", top)
    assert mounts[0].type == OVERLAY_TYPE
    assert "ro" in mounts[0].options
    with mounted(mounts, tmp_path / "view") as view:
        assert (view / "a").read_bytes() == b"a\n"
        with pytest.raises(OSError) as failure:
            (view / "c").write_bytes(b"no\n")
        assert failure.value.errno == errno.EROFS
    with pytest.raises(FailedPrecondition):
        remote.commit("from-view", "view")


def test_new_root_is_0755(remote: RemoteSnapshotter, tmp_path: Path) -> None:
    with mounted(remote.prepare("preparing"), tmp_path / "mnt") as mnt:
        assert mnt.stat().st_mode & 0o7777 == 0o755


def test_128_layer_mount(remote: RemoteSnapshotter, tmp_path: Path) -> None:
    """128 committed layers, each adding a file and replacing a shared one; the view's
    fsnap-overlay mount has 128 lower directories and shows the merged result."""
    parent = ""
    for i in range(128):
        key = f"prepare-{i}"
        upper = _upper(remote.prepare(key, parent)[0])
        (upper / f"f-{i}").write_bytes(f"{i}\n".encode())
        (upper / "shared").write_bytes(f"from {i}\n".encode())
        parent = f"committed-{i}"
        remote.commit(parent, key)
    mounts = remote.view("fullview", parent)
    lowerdir = next(o for o in mounts[0].options if o.startswith("lowerdir="))
    assert lowerdir.count(":") == 127
    with mounted(mounts, tmp_path / "view") as view:
        assert sorted(p.name for p in view.iterdir()) == sorted(
            ["shared", *(f"f-{i}" for i in range(128))]
        )
        assert (view / "shared").read_bytes() == b"from 127\n"
        assert (view / "f-0").read_bytes() == b"0\n"


def _upper(mount: Mount) -> Path:
    """Where an active snapshot's own changes go: its bind source or its upperdir."""
    if mount.type == "bind":
        return Path(mount.source)
    return Path(next(o for o in mount.options if o.startswith("upperdir=")).partition("=")[2])


def test_unpack_snapshots_are_written_directly(remote: RemoteSnapshotter, tmp_path: Path) -> None:
    """containerd's unpack keys get an ``overlay``-typed answer over parents (its applier
    then writes into upperdir without mounting); Commit turns overlayfs's whiteout device
    and opaque xattr into fsnap's layer format and index."""
    import os
    import stat

    top = mounted_check_layers(
        remote,
        tmp_path,
        [[CreateFile("/gone", b"x\n"), CreateDir("/d"), CreateFile("/d/old", b"o\n")]],
    )
    key = "ns/7/extract-123-abc sha256:" + "0" * 64
    (mount,) = remote.prepare(key, top)
    assert mount.type == "overlay"
    upper = _upper(mount)
    assert len(suite_dir(mount).split(":")) == 1
    os.mknod(upper / "gone", stat.S_IFCHR | 0o000, os.makedev(0, 0))  # as containerd writes
    (upper / "d").mkdir()
    os.setxattr(upper / "d", "trusted.overlay.opaque", b"y")
    (upper / "d" / "new").write_bytes(b"n\n")
    remote.commit("unpacked", key)
    assert not (upper / "gone").exists()
    assert (upper / ".wh.gone").is_file()
    assert (upper / "d" / ".wh..wh..opq").is_file()
    assert "trusted.overlay.opaque" not in os.listxattr(upper / "d")
    with mounted(remote.view("check", "unpacked"), tmp_path / "check") as view:
        assert sorted(p.name for p in view.iterdir()) == ["d"]
        assert sorted(p.name for p in (view / "d").iterdir()) == ["new"]
    (base,) = remote.prepare("ns/8/extract-9 sha256:" + "1" * 64)
    assert base.type == "bind"  # no parents: the directory itself


def suite_dir(mount: Mount) -> str:
    return next(o for o in mount.options if o.startswith("lowerdir=")).partition("=")[2]
