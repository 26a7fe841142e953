"""Path resolution while applying a layer (``fsnap.archive.resolve``), where the breakout
and archive tests left mutants alive (docs/mutation.md): where members land when earlier
members replaced, linked or cached the directories on their way, the symlink limit, and
what a big layer costs in file descriptors."""

from __future__ import annotations

import io
import os
import resource
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.tar import TarBuilder

from fsnap.archive.apply import ApplyResult, apply_layer
from fsnap.archive.entry import Entry
from fsnap.archive.resolve import RootDir
from fsnap.diff.scan import scan_snapshot
from fsnap.diff.tar import write_tar
from fsnap.errors import FailedPrecondition, InvalidArgument

# No mount, no registry: these tests take seconds, so a minute means a hang.
pytestmark = pytest.mark.timeout(60)

MAX_LINKS = 255  # symlinks one member's path may pass through (the kernel's ELOOP is 40)


def apply(tar: TarBuilder, root: Path) -> dict[str, Entry]:
    result: ApplyResult = apply_layer(io.BytesIO(tar.data()), root, sync=False)
    return {e.path: e for e in result.entries}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    return r


def open_fds() -> list[str]:
    return sorted(os.listdir("/proc/self/fd"))


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_file_in_the_way_of_a_directory_is_replaced_and_its_links_keep_it(root: Path) -> None:
    """``a`` is a file, then ``a/b`` needs it as a directory: the later member wins, and
    ``h``, a hard link to the old file, keeps its bytes (in the index too, which the mount
    serves: ``h`` becomes the file, not a link to what is now a directory)."""
    tar = TarBuilder().file("a", b"old file").hardlink("h", "a").file("a/b", b"new")
    idx = apply(tar, root)
    assert (root / "a/b").read_bytes() == b"new"
    assert (root / "h").read_bytes() == b"old file"
    assert (idx["h"].kind, idx["h"].size) == ("file", 8)
    assert (idx["a"].kind, idx["a"].implicit) == ("dir", True)
    assert mode(root / "a") == idx["a"].mode == 0o755


def test_missing_parents_are_made_0755_on_disk_as_in_the_index(root: Path) -> None:
    idx = apply(TarBuilder().file("x/y/f", b"deep"), root)
    for path in ("x", "x/y"):
        assert idx[path].implicit
        assert mode(root / path) == idx[path].mode == 0o755
    assert (root / "x/y/f").read_bytes() == b"deep"


def test_a_directory_replaced_by_a_file_then_needed_again(root: Path) -> None:
    """The directory ``a`` (opened once for ``a/x``) is replaced by a file, then ``a/y``
    needs a directory there again: ``y`` lands in the new directory, ``x`` is gone."""
    tar = TarBuilder().dir("a").file("a/x", b"x").file("a", b"file").file("a/y", b"y")
    idx = apply(tar, root)
    assert os.listdir(root / "a") == ["y"]
    assert (root / "a/y").read_bytes() == b"y"
    assert "a/x" not in idx
    assert idx["a/y"].kind == "file"


def test_a_relative_symlink_climbs_from_where_it_is(root: Path) -> None:
    """``a/b/l -> ../c`` names ``a/c``: ``..`` is taken from ``a/b``, two levels deep."""
    tar = TarBuilder().dir("a/b").dir("a/c").symlink("a/b/l", "../c").file("a/b/l/f", b"f")
    idx = apply(tar, root)
    assert (root / "a/c/f").read_bytes() == b"f"
    assert "a/c/f" in idx
    assert os.readlink(root / "a/b/l") == "../c"


def test_names_repeated_at_other_depths_land_at_their_own_path(root: Path) -> None:
    """``x`` at the top and ``a/b/x`` deeper: a member below the deeper one must not be
    put below the top one (each directory is looked up by its whole path)."""
    tar = TarBuilder().dir("x").file("x/y", b"top").dir("a/b/x").file("a/b/x/f", b"deep")
    idx = apply(tar, root)
    assert (root / "a/b/x/f").read_bytes() == b"deep"
    assert sorted(os.listdir(root / "x")) == ["y"]
    assert sorted(p for p in idx if p.startswith("x")) == ["x", "x/y"]


def symlink_chain(length: int) -> TarBuilder:
    """``l1 -> d``, ``l2 -> l1``, ... : a member below ``l<length>`` passes ``length`` links."""
    tar = TarBuilder().dir("d")
    for i in range(1, length + 1):
        tar.symlink(f"l{i}", "d" if i == 1 else f"l{i - 1}")
    return tar


def test_a_path_through_255_symlinks_resolves(root: Path) -> None:
    apply(symlink_chain(MAX_LINKS).file(f"l{MAX_LINKS}/f", b"end"), root)
    assert (root / "d/f").read_bytes() == b"end"


def test_a_path_through_256_symlinks_is_an_invalid_archive(root: Path) -> None:
    tar = symlink_chain(MAX_LINKS + 1).file(f"l{MAX_LINKS + 1}/f", b"end")
    with pytest.raises(InvalidArgument, match="too many levels of symlinks"):
        apply(tar, root)
    assert not (root / "d/f").exists()


DEFAULT_NOFILE = 1024  # the soft limit on open files of Debian's shells and systemd's services


@pytest.fixture
def default_nofile() -> Iterator[None]:
    """The soft limit on open files lowered to the usual default (a test machine may have
    a higher one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert len(open_fds()) < 50, "the test process holds few files"
    resource.setrlimit(resource.RLIMIT_NOFILE, (DEFAULT_NOFILE, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.usefixtures("default_nofile")
def test_a_layer_of_more_directories_than_open_files_allowed_applies(root: Path) -> None:
    """1,500 directories under the default limit of 1,024 open files: the applier keeps
    a bounded number of directories open, and closes every one it opened at the end."""
    tar = TarBuilder()
    count = 1500
    for i in range(count):
        tar.file(f"d{i:04}/f", str(i).encode())
    tar.file("d0000/again", b"first directory, opened again after the others")
    before = open_fds()
    idx = apply(tar, root)
    assert open_fds() == before
    assert len(os.listdir(root)) == count
    assert (root / f"d{count - 1:04}/f").read_bytes() == str(count - 1).encode()
    assert sorted(os.listdir(root / "d0000")) == ["again", "f"]
    assert idx["d0000/again"].kind == "file"


def test_a_path_deeper_than_the_directories_kept_open_then_one_at_the_top(root: Path) -> None:
    """300 levels (more directories than the applier keeps open) and then a member in the
    root: the root's own descriptor is never the one closed."""
    deep = "/".join(["a"] * 300)
    apply(TarBuilder().file(f"{deep}/f", b"deep").file("top", b"top"), root)
    assert (root / deep / "f").read_bytes() == b"deep"
    assert (root / "top").read_bytes() == b"top"


def test_a_commit_never_reads_through_a_directory_swapped_for_a_symlink(tmp_path: Path) -> None:
    """A container may change its upper directory while it is committed: a directory
    scanned as one and then replaced by a symlink to a host directory is refused, not
    followed (the committed layer would carry the host's file)."""
    fs, host = tmp_path / "fs", tmp_path / "host"
    (fs / "a").mkdir(parents=True)
    (fs / "a/f").write_bytes(b"container data")
    host.mkdir()
    (host / "f").write_bytes(b"host secret")
    entries = scan_snapshot(fs)
    (fs / "a/f").unlink()
    (fs / "a").rmdir()
    (fs / "a").symlink_to(host)
    out = io.BytesIO()
    with pytest.raises(FailedPrecondition, match="reading snapshot directory"):
        write_tar(fs, entries, out)
    assert b"host secret" not in out.getvalue()


def test_a_commit_never_hangs_on_a_directory_swapped_for_a_fifo(tmp_path: Path) -> None:
    """The same swap with a fifo: opening it to read would wait for a writer forever;
    a directory is opened as one only (refused at once: not a directory)."""
    fs = tmp_path / "fs"
    (fs / "a").mkdir(parents=True)
    (fs / "a/f").write_bytes(b"container data")
    entries = scan_snapshot(fs)
    (fs / "a/f").unlink()
    (fs / "a").rmdir()
    os.mkfifo(fs / "a")
    with pytest.raises(FailedPrecondition, match="Not a directory"):
        write_tar(fs, entries, io.BytesIO())


def test_the_directory_cache_holds_exactly_its_256_descriptors(root: Path) -> None:
    """Past ``_MAX_FDS`` directories met, a layer's resolver holds 256 descriptors open
    (the root's included): the budget it shares with the process's 1,024 open files is
    neither exceeded nor left unused (fewer would reopen directories a layer comes back
    to). Closing it gives every one back."""
    for i in range(300):
        (root / f"d{i}").mkdir()
    before = len(open_fds())
    resolver = RootDir(root)
    try:
        for i in range(300):
            assert resolver.resolve_dir([f"d{i}"], create=False) == f"d{i}"
        assert len(open_fds()) - before == 256
    finally:
        resolver.close()
    assert len(open_fds()) == before
