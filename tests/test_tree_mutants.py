"""The merged tree's folding rules, checked on the tree itself (no mount, no disk):
each test pins down a rule a mutant of ``fsnap/mount/tree.py`` broke without any other
test noticing (issue 18), so the mutation run of ``tree`` kills them in a second."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from fsnap.archive.entry import Entry
from fsnap.mount.tree import DIR_SIZE, Layer, MergedTree, Node, TreeBuilder


def build(tmp: Path, *layers: list[Entry], upper: bool = False) -> MergedTree:
    """The tree of ``layers`` (bottom first); the last one is a writable top if ``upper``."""
    count = len(layers)
    return MergedTree.build(
        Layer(tmp / f"l{i}", entries, f"layer{i}", upper=upper and i == count - 1)
        for i, entries in enumerate(layers)
    )


def get(tree: MergedTree, path: str) -> Node:
    node = tree.lookup(path)
    assert node is not None, path
    return node


def test_node_attributes_per_kind(tmp_path: Path) -> None:
    tree = build(
        tmp_path,
        [
            Entry("d", "dir", mode=0o1777, uid=5, gid=6, mtime=7, size=99),
            Entry("f", "file", mode=0o4755, size=12, mtime=3, atime=4),
            Entry("s", "symlink", mode=0o777, link="target/x", size=99),
            Entry("c", "char", mode=0o600, devmajor=1, devminor=3, size=99),
            Entry("b", "block", mode=0o600, devmajor=8, devminor=1, size=99),
            Entry("p", "fifo", mode=0o644, size=99),
            Entry("k", "socket", mode=0o755, size=99),
        ],
    )
    d, f, s = get(tree, "d"), get(tree, "f"), get(tree, "s")
    assert (d.mode, d.uid, d.gid, d.mtime, d.atime) == (stat.S_IFDIR | 0o1777, 5, 6, 7, 7)
    assert d.size == DIR_SIZE == 4096
    assert d.source is None
    assert d.rdev == 0
    assert (f.mode, f.size, f.mtime, f.atime, f.nlink, f.rdev) == (
        stat.S_IFREG | 0o4755,
        12,
        3,
        4,
        1,
        0,
    )
    assert f.link is None
    assert f.names is None
    assert f.children is None
    assert f.source == os.path.join(tmp_path / "l0", "f")
    assert (s.mode, s.link, s.size, s.source) == (stat.S_IFLNK | 0o777, b"target/x", 8, None)
    assert (s.rdev, s.nlink) == (0, 1)
    c, b = get(tree, "c"), get(tree, "b")
    assert (c.mode, c.rdev, c.size) == (stat.S_IFCHR | 0o600, os.makedev(1, 3), 0)
    assert (b.mode, b.rdev, b.size) == (stat.S_IFBLK | 0o600, os.makedev(8, 1), 0)
    p, k = get(tree, "p"), get(tree, "k")
    assert (p.mode, p.size, p.rdev, p.source) == (stat.S_IFIFO | 0o644, 0, 0, None)
    assert (k.mode, k.size, k.rdev, k.source) == (stat.S_IFSOCK | 0o755, 0, 0, None)
    # only regular files' bytes count
    assert tree.total_size == 12


def test_xattrs_kept_as_bytes_and_none_when_empty(tmp_path: Path) -> None:
    tree = build(
        tmp_path,
        [
            Entry("x", "file", xattrs={"security.capability": b"\x01\x02"}),
            Entry("y", "file"),
            Entry("d", "dir", xattrs={"user.a": b"1"}),
        ],
        [Entry("d", "dir", mode=0o700)],
    )
    assert get(tree, "x").xattrs == {b"security.capability": b"\x01\x02"}
    assert get(tree, "y").xattrs is None
    # a directory named again takes that layer's xattrs (none here)
    assert get(tree, "d").xattrs is None
    assert get(tree, "d").mode == stat.S_IFDIR | 0o700


def test_directory_named_again_takes_attributes_and_provenance(tmp_path: Path) -> None:
    tree = build(
        tmp_path,
        [Entry("d", "dir", mode=0o755, uid=1), Entry("e", "dir"), Entry("d/f", "file")],
        [Entry("d", "dir", mode=0o3775, uid=2, gid=3, mtime=9, atime=10)],
        [Entry("e", "dir", mode=0o700, implicit=True), Entry("e/g", "file")],
    )
    d, e = get(tree, "d"), get(tree, "e")
    assert (d.mode, d.uid, d.gid, d.mtime, d.atime) == (stat.S_IFDIR | 0o3775, 2, 3, 9, 10)
    assert d.layer == 1
    # its contents stay (named again is not opaque), and keep their own layer
    assert get(tree, "d/f").layer == 0
    # an implicit directory's attributes apply, its provenance does not
    assert e.mode == stat.S_IFDIR | 0o700
    assert e.layer == 0
    assert get(tree, "e/g").layer == 2
    assert tree.layer_names == ["layer0", "layer1", "layer2"]


def test_root_entry_and_root_provenance(tmp_path: Path) -> None:
    tree = build(tmp_path, [Entry("a", "file")], [Entry("b", "file")])
    assert tree.root.layer == 0  # no layer named the root: the bottom one made it
    assert tree.root.mode == stat.S_IFDIR | 0o755
    tree = build(tmp_path, [Entry("a", "file")], [Entry("", "dir", mode=0o700, uid=4)])
    assert tree.root.mode == stat.S_IFDIR | 0o700
    assert (tree.root.uid, tree.root.layer) == (4, 1)
    assert tree.root.ino == 1
    assert tree.root.parent is tree.root
    assert tree.nodes[0] is None
    assert tree.nodes[1] is tree.root


def test_an_empty_chain_is_an_empty_root() -> None:
    tree = MergedTree.build([])
    assert tree.root.layer == -1
    assert tree.root.names == []
    assert tree.root.nlink == 2
    assert tree.lookup("") is tree.root
    assert tree.total_size == 0


def test_missing_parents_are_0755_directories(tmp_path: Path) -> None:
    tree = build(
        tmp_path,
        [Entry("f", "file", size=1)],
        [Entry("f/g/h", "file", size=2), Entry("x/y", "symlink", link="z")],
    )
    f, g = get(tree, "f"), get(tree, "f/g")
    # a file in the way of a parent is replaced by a directory of the layer
    assert f.is_dir
    assert g.is_dir
    assert f.mode == g.mode == get(tree, "x").mode == stat.S_IFDIR | 0o755
    assert (f.uid, f.gid, f.layer, f.source) == (0, 0, 1, None)
    assert get(tree, "f/g/h").source == os.path.join(tmp_path / "l1", "f/g/h")
    assert tree.total_size == 2


def test_lookup_through_files_and_missing_names(tmp_path: Path) -> None:
    tree = build(tmp_path, [Entry("d", "dir"), Entry("d/f", "file")])
    assert tree.lookup("d/f/x") is None
    assert tree.lookup("d/f/x/y") is None
    assert tree.lookup("nothing/x") is None
    builder = TreeBuilder()
    builder.apply(Layer(tmp_path, [Entry("a", "dir"), Entry("a/b", "file")]))
    assert builder.lookup("a/b/c") is None
    node = builder.lookup("a/b")
    assert node is not None
    assert node.size == 0
    assert not node.is_dir


def test_whiteouts_of_what_is_not_there_are_ignored(tmp_path: Path) -> None:
    tree = build(
        tmp_path,
        [Entry("f", "file"), Entry("d", "dir"), Entry("d/keep", "file")],
        [
            Entry("missing/x", "whiteout"),
            Entry("f/x", "whiteout"),
            Entry("d/gone", "whiteout"),
            Entry("d/keep", "whiteout"),
        ],
    )
    assert tree.root.names == [b"d", b"f"]
    assert get(tree, "d").names == []
    assert get(tree, "f").nlink == 1


def test_whiteout_of_a_hard_link_name_counts_one_link_fewer(tmp_path: Path) -> None:
    tree = build(
        tmp_path,
        [
            Entry("a", "file", size=3),
            Entry("b", "hardlink", link="a", size=3),
            Entry("c", "hardlink", link="a", size=3),
        ],
        [Entry("b", "whiteout")],
    )
    a = get(tree, "a")
    assert a.nlink == 2
    assert get(tree, "c") is a
    assert tree.lookup("b") is None


def test_hard_links_to_nothing_or_to_directories_are_dropped(tmp_path: Path) -> None:
    tree = build(
        tmp_path,
        [
            Entry("d", "dir"),
            Entry("f", "file"),
            Entry("l1", "hardlink", link="nothing"),
            Entry("l2", "hardlink", link="d"),
            Entry("f", "hardlink", link="f"),  # a name linked to itself
            Entry("sub/l3", "hardlink", link="f"),
        ],
    )
    assert tree.lookup("l1") is None
    assert tree.lookup("l2") is None
    f = get(tree, "f")
    assert f.nlink == 2
    assert get(tree, "sub/l3") is f
    assert get(tree, "sub").mode == stat.S_IFDIR | 0o755
    # one node, one inode number, however many names
    assert len([n for n in tree.nodes if n is f]) == 1


def test_opaque_directory_new_in_its_layer(tmp_path: Path) -> None:
    tree = build(
        tmp_path,
        [Entry("o", "dir"), Entry("o/x", "file")],
        [Entry("n", "dir", opaque=True), Entry("n/y", "file"), Entry("f", "dir", opaque=True)],
    )
    assert get(tree, "n").names == [b"y"]
    assert get(tree, "o").names == [b"x"]
    assert get(tree, "f").names == []


def test_opaque_directory_detaches_hard_links_below_it(tmp_path: Path) -> None:
    tree = build(
        tmp_path,
        [
            Entry("a", "file"),
            Entry("o", "dir"),
            Entry("o/s", "dir"),
            Entry("o/s/b", "hardlink", link="a"),
            Entry("o/c", "hardlink", link="a"),
        ],
        [Entry("o", "dir", opaque=True)],
    )
    assert get(tree, "a").nlink == 1
    assert get(tree, "o").names == []


def test_link_counts_of_directories(tmp_path: Path) -> None:
    tree = build(
        tmp_path,
        [
            Entry("a", "dir"),
            Entry("a/b", "dir"),
            Entry("a/c", "dir"),
            Entry("a/f", "file"),
            Entry("a/b/d", "dir"),
        ],
    )
    assert tree.root.nlink == 3
    assert get(tree, "a").nlink == 4
    assert get(tree, "a/b").nlink == 3
    assert get(tree, "a/b/d").nlink == 2
    assert get(tree, "a/f").nlink == 1


def test_parents_names_and_inode_numbers(tmp_path: Path) -> None:
    tree = build(tmp_path, [Entry("a", "dir"), Entry("a/b", "dir"), Entry("a/b/f", "file")])
    a, b, f = get(tree, "a"), get(tree, "a/b"), get(tree, "a/b/f")
    assert (a.parent, a.name) == (tree.root, b"a")
    assert (b.parent, b.name) == (a, b"b")
    assert (f.parent, f.name) == (b, b"f")
    assert sorted(n.ino for n in (a, b, f)) == [2, 3, 4]
    assert all(tree.nodes[n.ino] is n for n in (a, b, f))
    # before ``finish``, a directory attached already knows its parent
    builder = TreeBuilder()
    builder.apply(Layer(tmp_path, [Entry("p", "dir"), Entry("p/q", "dir"), Entry("r", "file")]))
    q = builder.lookup("p/q")
    assert q is not None
    assert q.parent is builder.lookup("p")
    r = builder.lookup("r")
    assert r is not None
    assert r.parent is None


def test_a_name_replaced_keeps_no_old_node(tmp_path: Path) -> None:
    tree = build(
        tmp_path,
        [Entry("x", "dir"), Entry("x/y", "file"), Entry("z", "file", size=5)],
        [Entry("x", "file", size=2), Entry("z", "dir")],
    )
    x, z = get(tree, "x"), get(tree, "z")
    assert not x.is_dir
    assert x.size == 2
    assert x.layer == 1
    assert z.is_dir
    assert z.names == []
    assert z.layer == 1
    assert tree.total_size == 2
    assert sum(1 for n in tree.nodes if n is not None) == 3


def test_walk_lists_every_path_parents_first_and_skips_holes(tmp_path: Path) -> None:
    tree = build(
        tmp_path,
        [
            Entry("a", "dir"),
            Entry("a/b", "dir"),
            Entry("a/b/c", "file"),
            Entry("a/z", "file"),
            Entry("m", "file"),
            Entry("n", "symlink", link="m"),
        ],
    )
    a = get(tree, "a")
    assert a.names is not None
    a.names.insert(0, None)  # a writable mount's hole where a name went away
    walked = list(tree.walk())
    paths = [path for path, _ in walked]
    assert sorted(paths) == [b"a", b"a/b", b"a/b/c", b"a/z", b"m", b"n"]
    assert paths.index(b"a") < paths.index(b"a/b") < paths.index(b"a/b/c")
    assert all(node is get(tree, os.fsdecode(path)) for path, node in walked)


def test_upper_marks(tmp_path: Path) -> None:
    tree = build(
        tmp_path,
        [Entry("d", "dir"), Entry("d/e", "dir"), Entry("d/f", "file"), Entry("g", "file")],
        [Entry("", "dir"), Entry("d", "dir", opaque=True), Entry("d/n", "file"), Entry("u", "dir")],
        upper=True,
    )
    marks = tree.upper
    assert marks is not None
    d = get(tree, "d")
    assert marks.present == {tree.root, d, get(tree, "d/n"), get(tree, "u")}
    assert marks.opaque == {d}
    # what the lower layers had, directory by directory (e is gone from the merged view)
    below = {node: names for node, names in marks.below.items() if node.ino}
    assert below[tree.root] == {b"d": True, b"g": False}
    assert below[d] == {b"e": True, b"f": False}
    assert len(marks.below) == 3
    # a read-only chain has no marks (a layer is not the writable top unless it says so)
    assert build(tmp_path, [Entry("d", "dir")]).upper is None
    assert MergedTree.build([Layer(tmp_path, [Entry("d", "dir")])]).upper is None


def test_upper_marks_of_a_directory_named_again_in_the_upper_layer(tmp_path: Path) -> None:
    tree = build(
        tmp_path,
        [Entry("d", "dir"), Entry("d/f", "file")],
        [Entry("d", "dir"), Entry("w", "dir", opaque=True)],
        upper=True,
    )
    marks = tree.upper
    assert marks is not None
    d, w = get(tree, "d"), get(tree, "w")
    assert marks.present == {d, w}
    assert marks.opaque == {w}
    assert get(tree, "d").names == [b"f"]
