"""MergedTree built from indexes alone: scale (128 layers, 100k entries) and link counts."""

from __future__ import annotations

from pathlib import Path

from fsnap.archive.entry import Entry
from fsnap.mount.tree import Layer, MergedTree


def test_128_layers_100k_entries(tmp_path: Path) -> None:
    layers = []
    for n in range(128):
        entries = [Entry(f"d{n}", "dir", mode=0o755), Entry("common", "file", size=n)]
        entries += [Entry(f"d{n}/f{i}", "file", size=i) for i in range(780)]
        if n:
            entries.append(Entry(f"d{n - 1}/f0", "whiteout"))
        layers.append(Layer(tmp_path / f"l{n}", entries))
    tree = MergedTree.build(layers)
    assert sum(len(layer.entries) for layer in layers) > 100_000
    common = tree.lookup("common")
    assert common is not None
    assert common.size == 127
    assert common.source == str(tmp_path / "l127" / "common")
    assert tree.lookup("d5/f0") is None
    assert tree.lookup("d127/f0") is not None
    files = [node for node in tree.nodes[1:] if node is not None]
    assert len(files) == 1 + 1 + 128 + 128 * 780 - 127
    assert len({node.ino for node in files}) == len(files)
    assert all(tree.nodes[node.ino] is node for node in files)


def test_removing_a_directory_drops_its_hard_link_names(tmp_path: Path) -> None:
    lower = [
        Entry("d", "dir"),
        Entry("d/a", "file", size=3),
        Entry("b", "hardlink", link="d/a", size=3),
        Entry("c", "hardlink", link="d/a", size=3),
    ]
    upper = [Entry("d", "whiteout"), Entry("c", "symlink", link="b")]
    tree = MergedTree.build([Layer(tmp_path / "l1", lower), Layer(tmp_path / "l2", upper)])
    b = tree.lookup("b")
    assert b is not None
    assert b.nlink == 1
    assert b.source == str(tmp_path / "l1" / "d/a")
    assert tree.lookup("d") is None
    assert tree.root.names == [b"b", b"c"]


def test_opaque_directory_keeps_only_its_own_layer(tmp_path: Path) -> None:
    lower = [Entry("o", "dir"), Entry("o/x", "file"), Entry("o/s", "dir"), Entry("o/s/y", "file")]
    upper = [Entry("o/z", "file"), Entry("o", "dir", mode=0o700, opaque=True)]
    tree = MergedTree.build([Layer(tmp_path / "l1", lower), Layer(tmp_path / "l2", upper)])
    o = tree.lookup("o")
    assert o is not None
    assert o.names == [b"z"]
    assert o.mode & 0o7777 == 0o700
    assert o.nlink == 2
