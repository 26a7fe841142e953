"""The snapshotter against the behaviours of containerd's conformance suite
(core/snapshots/testsuite), with a plain-directory merged view standing in for a mount.

Cases typed ``Conformant`` use the ``Snapshotter`` contract only: ``test_serve_conformance``
runs them again against ``RemoteSnapshotter`` over gRPC. Cases typed ``LocalSnapshotter``
check what only the local store has (its directories, its index)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.snapshot import (
    Chmod,
    Chown,
    Conformant,
    CreateDir,
    CreateFile,
    LayerWriter,
    Link,
    Op,
    RemoveAll,
    Rename,
    apply_flat,
    check_layers,
    materialise,
    tree_state,
)

from fsnap.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from fsnap.snapshots import Kind, LocalSnapshotter, Mounts, Snapshotter

GC_ROOT = {"containerd.io/gc.root": "check"}


@pytest.fixture
def work(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


def test_basic(sn: Conformant, work: Path) -> None:
    initial: list[Op] = [
        CreateFile("/foo", b"foo\n", 0o777),
        CreateDir("/a", 0o755),
        CreateDir("/a/b", 0o755),
        CreateDir("/a/b/c", 0o755),
    ]
    diff: list[Op] = [
        CreateFile("/bar", b"bar\n", 0o777),
        CreateFile("/foo", b"bar\n", 0o777),
        RemoveAll("/a/b"),
    ]
    top = check_layers(sn, work, [initial, diff])
    base = sn.stat("layer-0")
    assert (base.kind, base.parent) == (Kind.COMMITTED, "")
    assert (sn.stat(top).kind, sn.stat(top).parent) == (Kind.COMMITTED, "layer-0")
    with pytest.raises(NotFound):
        sn.stat("layer-0-active")
    walked = {info.name: info for info in sn.walk()}
    assert walked == {"layer-0": base, top: sn.stat(top)}
    with pytest.raises(FailedPrecondition, match="remove"):
        sn.remove("layer-0")
    sn.remove(top)
    sn.remove("layer-0")
    assert list(sn.walk()) == []


def test_stat_active(sn: LocalSnapshotter) -> None:
    mounts = sn.prepare("preparing", "", GC_ROOT)
    assert mounts.upper is not None
    assert not mounts.readonly
    (mounts.upper / "foo").write_bytes(b"foo\n")
    info = sn.stat("preparing")
    assert (info.name, info.kind, info.parent, info.labels) == (
        "preparing",
        Kind.ACTIVE,
        "",
        GC_ROOT,
    )


def test_stat_committed(sn: LocalSnapshotter) -> None:
    mounts = sn.prepare("preparing")
    assert mounts.upper is not None
    (mounts.upper / "foo").write_bytes(b"foo\n")
    sn.commit("committed", "preparing", GC_ROOT)
    info = sn.stat("committed")
    assert (info.name, info.kind, info.parent, info.labels) == (
        "committed",
        Kind.COMMITTED,
        "",
        GC_ROOT,
    )
    assert (sn.dir("committed") / "foo").read_bytes() == b"foo\n"


def test_transitivity(sn: Conformant, work: Path) -> None:
    check_layers(sn, work, [[CreateFile("/foo", b"foo\n")], [CreateFile("/foo", b"foo bar\n")]])
    child = sn.stat("layer-1")
    assert child.parent == "layer-0"
    assert sn.stat(child.parent).parent == ""
    assert [i.name for i in sn.chain("layer-1")] == ["layer-0", "layer-1"]


def test_long_chain_transitivity(sn: Conformant) -> None:
    parent = ""
    for n in range(20):
        sn.prepare(f"a{n}", parent)
        sn.commit(f"c{n}", f"a{n}")
        parent = f"c{n}"
    chain = sn.chain("c19")
    assert [i.name for i in chain] == [f"c{n}" for n in range(20)]
    assert [i.parent for i in chain] == ["", *[f"c{n}" for n in range(19)]]


def test_prepare_view_same_key_fails(sn: Conformant) -> None:
    sn.prepare("preparing")
    sn.commit("snapA", "preparing")
    sn.prepare("newlayer", "snapA")
    with pytest.raises(AlreadyExists):
        sn.view("newlayer", "snapA")
    with pytest.raises(AlreadyExists):
        sn.prepare("newlayer", "snapA")
    sn.view("viewlayer", "snapA")
    with pytest.raises(AlreadyExists):
        sn.view("viewlayer", "snapA")
    with pytest.raises(AlreadyExists):
        sn.prepare("snapA", "")


def test_view_and_prepare_need_a_committed_parent(sn: Conformant) -> None:
    with pytest.raises(NotFound):
        sn.view("v", "missing")
    with pytest.raises(NotFound):
        sn.prepare("p", "missing")
    sn.prepare("active")
    with pytest.raises(InvalidArgument):
        sn.prepare("p", "active")
    sn.view("v0", "")
    with pytest.raises(InvalidArgument):
        sn.view("v", "v0")
    with pytest.raises(InvalidArgument):
        sn.prepare("", "")
    assert sorted(i.name for i in sn.walk()) == ["active", "v0"]


def _base_snapshots(sn: Conformant) -> None:
    sn.prepare("c1-a", "", GC_ROOT)
    sn.commit("c1", "c1-a", GC_ROOT)
    sn.prepare("c2-a", "c1", GC_ROOT)
    sn.commit("c2", "c2-a", GC_ROOT)
    sn.prepare("a1", "c2", GC_ROOT)
    sn.prepare("a2", "", GC_ROOT)
    sn.view("v1", "c2", GC_ROOT)
    sn.view("v2", "", GC_ROOT)


UPDATE_CASES = [
    ("c1", Kind.COMMITTED, ""),
    ("c2", Kind.COMMITTED, "c1"),
    ("a1", Kind.ACTIVE, "c2"),
    ("a2", Kind.ACTIVE, ""),
    ("v1", Kind.VIEW, "c2"),
    ("v2", Kind.VIEW, ""),
]


@pytest.mark.parametrize(("name", "kind", "parent"), UPDATE_CASES)
def test_update_labels(sn: Conformant, name: str, kind: Kind, parent: str) -> None:
    _base_snapshots(sn)
    before = sn.stat(name)
    assert before.created == before.updated
    expected = {"l1": "v1", "l2": "v2", "l3": "v3", **GC_ROOT}
    after = sn.update(name, expected)
    assert (after.name, after.kind, after.parent, after.created) == (
        name,
        kind,
        parent,
        before.created,
    )
    assert after.updated >= before.created
    assert after.labels == expected == sn.stat(name).labels
    after = sn.update(name, {"l1": "updated", "l4": "v4"}, ["labels.l1", "labels.l2"])
    assert after.labels == {"l1": "updated", "l3": "v3", **GC_ROOT}
    after = sn.update(name, {"l4": "v4", **GC_ROOT}, ["labels"])
    assert after.labels == {"l4": "v4", **GC_ROOT}
    with pytest.raises(InvalidArgument):
        sn.update(name, {}, ["parent"])
    assert sn.stat(name).parent == parent


def test_remove_then_reuse_key(sn: Conformant) -> None:
    sn.prepare("committed-a")
    sn.commit("committed-1", "committed-a")
    sn.prepare("reuse-1", "committed-1")
    sn.remove("reuse-1")
    sn.view("reuse-1", "committed-1")
    sn.remove("reuse-1")
    sn.prepare("reuse-1", "")
    sn.remove("committed-1")
    sn.commit("committed-1", "reuse-1")
    assert sn.stat("committed-1").kind is Kind.COMMITTED
    with pytest.raises(NotFound):
        sn.remove("reuse-1")


WALK_CASES = [
    (
        ["a-np", "p", "a", "v", "p-wl", "a-wl", "v-wl", "a-np-wl"],
        ['labels."containerd.io/gc.root"==check-walk'],
    ),
    (["a-np", "a", "a-wl", "a-np-wl"], ['kind==active,labels."containerd.io/gc.root"==check-walk']),
    (["v", "v-wl"], ['kind==view,labels."containerd.io/gc.root"==check-walk']),
    (["p", "p-wl"], ['kind==committed,labels."containerd.io/gc.root"==check-walk']),
    (["p", "a-np-wl"], ["name==p", "name==a-np-wl"]),
    (["a-wl"], ["name==a-wl,labels.l"]),
    (["a", "v"], ["parent==p"]),
    # (containerd's metadata layer finds a remote snapshotter's base layer this way)
    (["a-np", "p", "p-wl", "a-np-wl"], ['parent=="",labels."containerd.io/gc.root"==check-walk']),
    (["a", "v", "a-wl", "v-wl"], ['parent!="",labels."containerd.io/gc.root"==check-walk']),
    (["p-wl", "a-wl", "v-wl", "a-np-wl"], ["labels.l"]),
    (["a-wl", "a-np-wl"], ["labels.l==2"]),
    (["a-wl", "v-wl", "a-np-wl"], ["labels.l~=^[23]$"]),
]


@pytest.mark.parametrize(("matches", "filters"), WALK_CASES)
def test_walk_filters(sn: Conformant, matches: list[str], filters: list[str]) -> None:
    root = {"containerd.io/gc.root": "check-walk"}
    sn.prepare("a-np", "", root)
    sn.prepare("p-tmp", "", root)
    sn.commit("p", "p-tmp", root)
    sn.prepare("a", "p", root)
    sn.view("v", "p", root)
    sn.prepare("p-wl-tmp", "", root)
    sn.commit("p-wl", "p-wl-tmp", {"l": "1", **root})
    sn.prepare("a-wl", "p-wl", {"l": "2", **root})
    sn.view("v-wl", "p-wl", {"l": "3", **root})
    sn.prepare("a-np-wl", "", {"l": "2", **root})
    assert sorted(i.name for i in sn.walk(filters)) == sorted(matches)


@pytest.mark.parametrize(
    "bad", ["nosuchfield==x", "name==a,", "labels", "name=x", 'labels."unterminated']
)
def test_walk_rejects_bad_filters(sn: LocalSnapshotter, bad: str) -> None:
    with pytest.raises(InvalidArgument):
        list(sn.walk([bad]))


def test_stat_in_walk(sn: Conformant) -> None:
    _base_snapshots(sn)
    for info in sn.walk():
        assert info == sn.stat(info.name)


def test_layer_file_update(sn: Conformant, work: Path) -> None:
    check_layers(
        sn,
        work,
        [
            [
                CreateDir("/d", 0o755),
                CreateFile("/d/f", b"one\n", 0o644),
                CreateFile("/g", b"x"),
                CreateDir("/e", 0o755),
                CreateFile("/e/inner", b"i"),
            ],
            [
                CreateFile("/d/f", b"two, longer\n", 0o600),
                RemoveAll("/g"),
                CreateDir("/g", 0o700),
                RemoveAll("/e"),
                CreateFile("/e", b"now a file"),
            ],
            [
                Chmod("/d/f", 0o755),
                CreateFile("/g/in", b"y"),
                RemoveAll("/e"),
                CreateDir("/e", 0o711),
            ],
        ],
    )


def test_remove_directory_in_lower_layer(sn: Conformant, work: Path) -> None:
    check_layers(
        sn,
        work,
        [
            [
                CreateDir("/lib", 0o700),
                CreateFile("/lib/hidden", b"a"),
                CreateDir("/lib/sub", 0o755),
                CreateFile("/lib/sub/deep", b"b"),
            ],
            [RemoveAll("/lib")],
            [CreateDir("/lib", 0o755), CreateFile("/lib/new", b"c")],
        ],
    )
    top = materialise(sn, "layer-2", work / "top")
    assert sorted(os.listdir(top / "lib")) == ["new"]


def test_chown(sn: LocalSnapshotter, work: Path) -> None:
    check_layers(
        sn,
        work,
        [
            [
                CreateDir("/opt", 0o711),
                CreateDir("/opt/a", 0o700),
                CreateDir("/opt/a/b", 0o700),
                CreateFile("/opt/a/b/file.txt", b"hello", 0o644),
            ],
            [
                Chown("/opt", 1, 1),
                Chown("/opt/a", 1, 1),
                Chown("/opt/a/b", 1, 1),
                Chown("/opt/a/b/file.txt", 1, 1),
            ],
        ],
    )
    assert os.stat(sn.dir("layer-1") / "opt/a/b/file.txt").st_uid == 1


def test_directory_permission_on_commit(sn: LocalSnapshotter, work: Path) -> None:
    check_layers(
        sn,
        work,
        [
            [
                CreateDir("/dir1", 0o700),
                CreateDir("/dir2", 0o750),
                CreateDir("/dir3", 0o777),
                Chown("/dir1", 1, 1),
                CreateFile("/dir3/f", b"x"),
            ],
            [
                CreateFile("/dir1/f", b"copy-up keeps 0700 and 1:1"),
                CreateDir("/dir2/sub", 0o711),
                CreateDir("/dir4", 0o1777),
            ],
        ],
    )
    home = sn.dir("layer-1")
    assert os.stat(home / "dir1").st_mode & 0o7777 == 0o700
    assert os.stat(home / "dir4").st_mode & 0o7777 == 0o1777


def test_remove_intermediate_snapshot_refused(sn: Conformant) -> None:
    sn.prepare("base")
    sn.commit("committed-base", "base")
    sn.prepare("intermediate", "committed-base")
    sn.commit("committed-inter", "intermediate")
    sn.prepare("toplayer", "committed-inter")
    with pytest.raises(FailedPrecondition):
        sn.remove("committed-inter")
    with pytest.raises(FailedPrecondition):
        sn.remove("committed-base")
    sn.remove("toplayer")
    sn.remove("committed-inter")
    sn.remove("committed-base")
    assert list(sn.walk()) == []


def test_deleted_files_in_child(sn: Conformant, work: Path) -> None:
    check_layers(
        sn,
        work,
        [
            [CreateFile("/foo", b"foo\n", 0o777), CreateFile("/foobar", b"foobar\n", 0o777)],
            [RemoveAll("/foobar")],
            [],
        ],
    )
    assert not (materialise(sn, "layer-2", work / "top") / "foobar").exists()


def test_move_file_from_lower_layer(sn: Conformant, work: Path) -> None:
    check_layers(
        sn,
        work,
        [
            [
                CreateDir("/dir1", 0o700),
                CreateFile("/dir1/f1", b"Hello", 0o644),
                CreateDir("/dir2", 0o700),
                CreateFile("/dir2/f2", b"...", 0o644),
            ],
            [
                CreateDir("/dir3", 0o700),
                CreateFile("/dir3/f1", b"Hello", 0o644),
                RemoveAll("/dir1"),
                Link("/dir2/f2", "/dir3/f2"),
                RemoveAll("/dir2/f2"),
            ],
        ],
    )


def test_rename(sn: Conformant, work: Path) -> None:
    check_layers(
        sn,
        work,
        [
            [
                CreateDir("/dir1", 0o755),
                CreateFile("/dir1/f1", b"f1"),
                CreateDir("/dir1/sub", 0o700),
                CreateFile("/dir1/sub/f", b"deep"),
                CreateFile("/somefile", b"some"),
            ],
            [Rename("/dir1", "/dir2"), Rename("/somefile", "/dir2/moved")],
            [CreateDir("/dir1", 0o750), Rename("/dir2/f1", "/dir1/f1")],
        ],
    )


def test_view_is_read_only(sn: LocalSnapshotter) -> None:
    sn.prepare("preparing")
    sn.commit("committed", "preparing")
    mounts = sn.view("view", "committed")
    assert mounts.readonly
    assert mounts.upper is None
    assert mounts.work is None
    assert mounts.lowers == [sn.dir("committed")]
    with pytest.raises(FailedPrecondition):
        sn.commit("from-view", "view")
    with pytest.raises(FailedPrecondition):
        sn.index.write("view", [])
    empty = sn.view("empty-view", "")
    assert empty.readonly
    assert empty.lowers == [sn.dir("empty-view")]
    sn.remove("view")
    sn.remove("committed")


def test_local_snapshotter_is_a_snapshotter(sn: LocalSnapshotter) -> None:
    contract: Snapshotter[Mounts] = sn  # (mypy checks every verb's signature here)
    assert isinstance(contract, Snapshotter)  # (and this that every verb is there)
    conformant: Conformant = sn
    assert callable(conformant.chain)


def test_close_twice(sn: LocalSnapshotter) -> None:
    sn.prepare("closeTwice-prepare")
    sn.commit("closeTwice", "closeTwice-prepare")
    sn.remove("closeTwice")
    sn.close()
    sn.close()
    with pytest.raises(FailedPrecondition):
        sn.stat("closeTwice")


def test_new_root_is_0755(sn: LocalSnapshotter, work: Path) -> None:
    old = os.umask(0o077)
    try:
        mounts = sn.prepare("preparing")
    finally:
        os.umask(old)
    assert mounts.upper is not None
    assert os.stat(mounts.upper).st_mode & 0o777 == 0o755
    assert os.stat(materialise(sn, "preparing", work / "view")).st_mode & 0o777 == 0o755


def test_128_layer_chain(sn: LocalSnapshotter, work: Path) -> None:
    layers: list[list[Op]] = [
        [
            CreateFile("/bottom", b"way at the bottom\n", 0o777),
            CreateFile("/overwriteme", b"FIRST!\n", 0o777),
            CreateDir("/addhere", 0o755),
            CreateDir("/onlyme", 0o755),
            CreateFile("/onlyme/bottom", b"bye!\n", 0o777),
        ]
    ]
    for i in range(1, 128):
        layers.append(
            [
                CreateFile("/overwriteme", f"{i} WAS HERE!\n".encode(), 0o777),
                CreateFile(f"/addhere/file-{i}", b"same\n", 0o755),
                RemoveAll("/onlyme"),
                CreateDir("/onlyme", 0o755),
                CreateFile(f"/onlyme/file-{i}", b"only me!\n", 0o777),
            ]
        )
    flat = work / "flat"
    flat.mkdir()
    parent = ""
    for i, ops in enumerate(layers):
        sn.prepare(f"prepare-{i}", parent)
        if i % 32 == 0:
            LayerWriter(sn, f"prepare-{i}", work).apply(ops)
        else:
            _write_fast(sn, f"prepare-{i}", i)
        apply_flat(flat, ops)
        parent = f"committed-{i}"
        sn.commit(parent, f"prepare-{i}")
    mounts = sn.view("fullview", parent)
    assert len(mounts.lowers) == 128
    assert mounts.lowers[0] == sn.dir("committed-127")
    assert mounts.lowers[-1] == sn.dir("committed-0")
    os.chmod(flat, 0o755)
    view = materialise(sn, "fullview", work / "fullview")
    assert tree_state(view) == tree_state(flat)


def _write_fast(sn: LocalSnapshotter, key: str, i: int) -> None:
    """What ``LayerWriter`` writes for a 128-chain layer, without re-merging the lowers (the
    full writer runs every 32 layers, so the two are checked against each other)."""
    upper = sn.dir(key)
    (upper / "overwriteme").write_bytes(f"{i} WAS HERE!\n".encode())
    os.chmod(upper / "overwriteme", 0o777)
    (upper / "addhere").mkdir()
    (upper / "addhere" / f"file-{i}").write_bytes(b"same\n")
    os.chmod(upper / "addhere" / f"file-{i}", 0o755)
    (upper / "onlyme").mkdir()
    (upper / "onlyme" / ".wh..wh..opq").touch()
    (upper / "onlyme" / f"file-{i}").write_bytes(b"only me!\n")
    os.chmod(upper / "onlyme" / f"file-{i}", 0o777)
