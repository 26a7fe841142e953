"""The cached tree at scale: a 20,000-entry chain loads from the cache without making its
nodes, shows exactly what the built tree shows once walked, and stays within a per-entry
memory bound (measured with tracemalloc in this process, no FUSE needed)."""

from __future__ import annotations

import gc
import hashlib
import marshal
import os
import tracemalloc
from pathlib import Path

import pytest

from fsnap.archive.entry import Entry
from fsnap.mount import lazytree, treecache
from fsnap.mount.tree import Layer, MergedTree, Node
from fsnap.snapshots.info import Info, Kind

ENTRIES = 20_000
# Bytes per entry the loaded tree may hold: before any node is made (the arrays only; eager
# nodes took ~430) and after every node was made by a full walk (measured ~445 at 100,000).
LOADED_BOUND = 200
WALKED_BOUND = 600


def _layers(base: Path) -> list[Layer]:
    """Two layers of ~10,000 entries: directories of 100, files, symlinks, a hard link, an
    xattr, a device, a whiteout and an opaque directory, and a file rewritten above."""
    lower: list[Entry] = [Entry("etc", "dir"), Entry("etc/dev", "char", devmajor=1, devminor=3)]
    upper: list[Entry] = [Entry("etc/dev", "whiteout"), Entry("opq", "dir", opaque=True)]
    lower += [Entry("opq", "dir"), Entry("opq/hidden", "file", size=1)]
    for n in range(ENTRIES // 101):
        layer = lower if n % 2 else upper
        layer.append(Entry(f"d{n}", "dir", mode=0o750, uid=n, mtime=n * 10**9))
        for i in range(100):
            path = f"d{n}/f{i}"
            if i == 99:
                layer.append(Entry(path, "symlink", link=f"f{i - 1}"))
            else:
                layer.append(Entry(path, "file", size=i, mtime=(n * 100 + i) * 10**9))
    lower.append(Entry("d1/f0", "file", size=7, xattrs={"user.k": b"v"}))
    upper += [Entry("d1/f0", "file", size=8), Entry("d2/link", "hardlink", link="d2/f1")]
    return [Layer(base / "l0", lower, name="l0"), Layer(base / "l1", upper, name="l1")]


def _shape(tree: MergedTree) -> dict[bytes, tuple[object, ...]]:
    rows = {b"": _attrs(tree.root)}
    rows.update((path, _attrs(node)) for path, node in tree.walk())
    return rows


def _attrs(node: Node) -> tuple[object, ...]:
    assert node.parent is not None
    return (
        *(node.ino, node.mode, node.uid, node.gid, node.size, node.mtime, node.atime),
        *(node.rdev, node.nlink, node.link, node.xattrs, node.source, node.layer),
        *(node.parent.ino, node.name, node.names, node.is_dir),
    )


@pytest.fixture
def cached(tmp_path: Path) -> tuple[MergedTree, Path, list[Info], list[str]]:
    """The built tree and its saved cache."""
    os.chmod(tmp_path, 0o700)
    layers = _layers(tmp_path)
    tree = MergedTree.build(layers)
    chain = [Info(name=layer.name, kind=Kind.COMMITTED) for layer in layers]
    dirs = [os.fspath(layer.dir) for layer in layers]
    path = tmp_path / treecache.CACHE_NAME
    treecache.save(path, tree, chain, dirs)
    return tree, path, chain, dirs


def test_a_large_cached_tree_lists_what_the_built_tree_lists(
    cached: tuple[MergedTree, Path, list[Info], list[str]],
) -> None:
    built, path, chain, dirs = cached
    loaded = treecache.load(path, chain, dirs)
    assert loaded is not None
    assert len(built.nodes) > ENTRIES
    made = sum(node is not None for node in loaded.nodes)
    assert made <= 2  # the root (and nothing else) before anything is looked up
    link = loaded.lookup("d2/link")
    assert link is not None
    assert link is loaded.lookup("d2/f1")
    assert link.nlink == 2
    assert loaded.lookup("etc/dev") is None
    assert loaded.lookup("opq/hidden") is None
    assert _shape(loaded) == _shape(built)
    assert sum(node is not None for node in loaded.nodes) == len(built.nodes) - 1
    assert (loaded.total_size, len(loaded.nodes)) == (built.total_size, len(built.nodes))
    assert loaded.layer_names == ["l0", "l1"]


def test_per_entry_memory_of_the_cached_tree(
    cached: tuple[MergedTree, Path, list[Info], list[str]],
) -> None:
    built, path, chain, dirs = cached
    entries = len(built.nodes) - 1
    del built
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        loaded = treecache.load(path, chain, dirs)
        assert loaded is not None
        gc.collect()
        after_load = tracemalloc.get_traced_memory()[0] - start
        walked = sum(1 for _ in loaded.walk())
        gc.collect()
        after_walk = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert walked == entries
    assert after_load / entries < LOADED_BOUND, after_load / entries
    assert after_walk / entries < WALKED_BOUND, after_walk / entries


def test_a_cache_with_an_inode_out_of_range_is_rebuilt(
    cached: tuple[MergedTree, Path, list[Info], list[str]],
) -> None:
    """Sound hash, wrong contents: a listing naming an inode the arrays do not hold."""
    built, path, chain, dirs = cached
    encoded = lazytree.encode(built, [None] * (len(built.nodes) - 1))
    encoded["entry_ino"] = encoded["entry_ino"][:-4] + (10**9).to_bytes(4, "little")
    payload = marshal.dumps((treecache.VERSION, ("l0", "l1"), encoded))
    path.write_bytes(treecache.MAGIC + hashlib.sha256(payload).digest() + payload)
    assert treecache.load(path, chain, dirs) is None
