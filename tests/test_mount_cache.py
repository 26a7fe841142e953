"""The merged tree cache of a committed chain: hit, miss, invalidation, distrust; and the
writable mount's one tree (``UpperMarks.below`` instead of a second tree of the lower layers)."""

from __future__ import annotations

import hashlib
import io
import marshal
import os
import tarfile
from pathlib import Path

import pytest
from support.mount import TarLayer, commit_chain, listing, mounted_snapshot

from fsnap.archive.apply import apply_layer
from fsnap.archive.entry import Entry
from fsnap.client import Client
from fsnap.mount import treecache
from fsnap.mount.source import snapshot_layers
from fsnap.mount.tree import Layer, MergedTree, Node


def _hardlink(layer: TarLayer, path: str, target: str) -> TarLayer:
    info = tarfile.TarInfo(path)
    info.type, info.linkname = tarfile.LNKTYPE, target
    layer.tar.addfile(info)
    return layer


def chain_tars() -> list[bytes]:
    """Three layers with what the fold has to get right: a whiteout, an opaque directory,
    a hard link, a symlink, a directory named again, an xattr."""
    base = TarLayer().dir("etc").file("etc/a", b"a1\n").file("etc/gone", b"x")
    base.dir("opt").file("opt/old", b"old").dir("usr", 0o750).file("usr/tool", b"t", 0o755)
    info = tarfile.TarInfo("etc/attr")
    info.size, info.pax_headers = 2, {"SCHILY.xattr.user.k": "v"}
    base.tar.addfile(info, io.BytesIO(b"xa"))
    middle = TarLayer().file("etc/.wh.gone", b"").file("opt/.wh..wh..opq", b"")
    middle.file("opt/new", b"new").symlink("etc/link", "a")
    _hardlink(middle.file("usr/big", b"b" * 5000), "usr/big2", "usr/big")
    top = TarLayer().dir("usr", 0o755).file("etc/a", b"a3\n").file("srv/data", b"d")
    return [base.bytes(), middle.bytes(), top.bytes()]


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, list[str]]:
    root = tmp_path / "root"
    with Client(root) as client:
        names = commit_chain(client, chain_tars())
    return root, names


def _shape(tree: MergedTree) -> dict[bytes, tuple[object, ...]]:
    """Everything a mount serves from a tree, per path (inode numbers included)."""
    rows: dict[bytes, tuple[object, ...]] = {b"": _attrs(tree.root)}
    for path, node in tree.walk():
        rows[path] = _attrs(node)
    return rows


def _attrs(node: Node) -> tuple[object, ...]:
    parent = node.parent.ino if node.parent is not None else None
    return (
        node.ino,
        node.mode,
        node.uid,
        node.gid,
        node.size,
        node.mtime,
        node.rdev,
        node.nlink,
        node.link,
        node.xattrs,
        node.source,
        node.layer,
        parent,
        node.name,
        node.names,
    )


def _fresh(client: Client, key: str) -> MergedTree:
    return MergedTree.build(snapshot_layers(client.snapshots, key))


def _cache(client: Client, key: str) -> Path:
    return client.snapshots.state_dir(key) / treecache.CACHE_NAME


def test_first_build_saves_and_next_load_reuses(store: tuple[Path, list[str]]) -> None:
    root, names = store
    with Client(root) as client:
        path = _cache(client, names[-1])
        assert not path.exists()
        built = treecache.merged_tree(client.snapshots, names[-1])
        first = os.stat(path)
        assert first.st_mode & 0o777 == 0o600
        loaded = treecache.merged_tree(client.snapshots, names[-1])
        again = os.stat(path)
        expected = _shape(_fresh(client, names[-1]))
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)  # a hit
    assert _shape(built) == expected
    assert _shape(loaded) == expected
    assert loaded.layer_names == names
    assert loaded.total_size == built.total_size
    assert loaded.lookup("usr/big") is loaded.lookup("usr/big2")
    gone = loaded.lookup("etc/gone")
    old = loaded.lookup("opt/old")
    assert gone is None
    assert old is None


def test_each_chain_has_its_own_cache(store: tuple[Path, list[str]]) -> None:
    root, names = store
    with Client(root) as client:
        treecache.merged_tree(client.snapshots, names[-1])
        middle = treecache.merged_tree(client.snapshots, names[1])
        assert _cache(client, names[1]).exists()
        assert _shape(middle) == _shape(_fresh(client, names[1]))
        # the top's cache copied under the middle snapshot is for another chain: refused
        _cache(client, names[1]).write_bytes(_cache(client, names[-1]).read_bytes())
        os.chmod(_cache(client, names[1]), 0o600)
        assert treecache.merged_tree(client.snapshots, names[1]).lookup("srv") is None


def test_mount_serves_the_cached_tree(store: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, names = store
    views = []
    for _ in range(2):
        with mounted_snapshot(root, names[-1], tmp_path / "mnt"):
            views.append(listing(tmp_path / "mnt"))
            assert (tmp_path / "mnt" / "usr" / "big2").read_bytes() == b"b" * 5000
            assert (tmp_path / "mnt" / "etc" / "a").read_bytes() == b"a3\n"
        with Client(root) as client:
            assert _cache(client, names[-1]).exists()
    assert views[0] == views[1]
    assert "etc/gone" not in views[0]
    assert "opt/new" in views[0]
    assert "opt/old" not in views[0]


def test_removing_the_snapshot_takes_its_cache_along(store: tuple[Path, list[str]]) -> None:
    """A snapshot removed and committed again under the same name shows its new contents."""
    root, names = store
    with Client(root) as client:
        treecache.merged_tree(client.snapshots, names[-1])
        path = _cache(client, names[-1])
        client.snapshots.remove(names[-1])
        assert not path.exists()
        client.snapshots.prepare("again", names[1])
        tar = TarLayer().file("etc/other", b"o").bytes()
        result = apply_layer(io.BytesIO(tar), client.snapshots.dir("again"), sync=False)
        client.snapshots.index.write("again", result.entries)
        client.snapshots.commit(names[-1], "again")
        tree = treecache.merged_tree(client.snapshots, names[-1])
    assert tree.lookup("etc/other") is not None
    assert tree.lookup("srv/data") is None


def _rebuilt(root: Path, key: str, spoil: object) -> None:
    """Spoil the cache with ``spoil(path)``; the next load must rebuild a correct tree and
    replace the file with a sound one."""
    with Client(root) as client:
        treecache.merged_tree(client.snapshots, key)
        path = _cache(client, key)
        before = os.stat(path).st_ino
        spoil(path)  # type: ignore[operator]
        tree = treecache.merged_tree(client.snapshots, key)
        assert _shape(tree) == _shape(_fresh(client, key))
        after = os.stat(path)
        assert after.st_ino != before
        assert after.st_uid == os.geteuid()
        dirs = [os.fspath(client.snapshots.dir(info.name)) for info in client.snapshots.chain(key)]
        assert treecache.load(path, client.snapshots.chain(key), dirs) is not None


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def _wrong_shape(path: Path) -> None:
    """Intact and hashed, but not a tree: decoding must fail cleanly."""
    payload = marshal.dumps((treecache.VERSION, ("x",), [(1, 2)]))
    path.write_bytes(treecache.MAGIC + hashlib.sha256(payload).digest() + payload)


def _foreign(path: Path) -> None:
    os.chown(path, 12345, 12345)


def _group_writable(path: Path) -> None:
    os.chmod(path, 0o620)


def _symlinked(path: Path) -> None:
    other = path.with_name("elsewhere")
    os.rename(path, other)
    os.symlink(other.name, path)


@pytest.mark.parametrize(
    "spoil", [_flip_a_byte, _truncate, _wrong_shape, _foreign, _group_writable, _symlinked]
)
def test_an_untrusted_or_damaged_cache_is_rebuilt(
    store: tuple[Path, list[str]], spoil: object
) -> None:
    root, names = store
    _rebuilt(root, names[-1], spoil)


def test_a_cache_in_a_directory_others_may_write_is_ignored(store: tuple[Path, list[str]]) -> None:
    root, names = store
    with Client(root) as client:
        treecache.merged_tree(client.snapshots, names[-1])
        home = client.snapshots.state_dir(names[-1])
        chain = client.snapshots.chain(names[-1])
        dirs = [os.fspath(client.snapshots.dir(info.name)) for info in chain]
        path = home / treecache.CACHE_NAME
        assert treecache.load(path, chain, dirs) is not None
        os.chmod(home, 0o777)
        try:
            assert treecache.load(path, chain, dirs) is None
        finally:
            os.chmod(home, 0o700)


def test_writable_tree_notes_what_lies_below(tmp_path: Path) -> None:
    """The one tree of a writable mount knows, per lower directory, which names exist
    below and which of them are directories; upper-only directories know of nothing."""
    root = tmp_path / "root"
    with Client(root) as client:
        names = commit_chain(client, chain_tars()[:2])
        lowers = snapshot_layers(client.snapshots, names[-1])
    (tmp_path / "upper" / "new").mkdir(parents=True)
    entries = [Entry(path=p, kind="dir", mode=0o755) for p in ("", "new", "etc")]
    top = Layer(tmp_path / "upper", entries, "top", upper=True)
    tree = MergedTree.build([*lowers, top])
    assert tree.upper is not None
    below = tree.upper.below
    assert below[tree.root] == {b"etc": True, b"opt": True, b"usr": True}
    etc = tree.lookup("etc")
    assert etc is not None
    assert etc in below
    assert below[etc].get(b"a") is False
    assert b"gone" not in below[etc]
    new = tree.lookup("new")
    assert new is not None
    assert new not in below
    read_only = MergedTree.build(lowers)
    assert read_only.upper is None
