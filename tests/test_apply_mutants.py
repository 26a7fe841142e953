"""Applying a layer (``fsnap.archive.apply``): what the archive tests did not pin down,
found by reading the module for its mutation run (docs/mutation.md): the declared-size
limit at its boundary, a setgid snapshot root, whiteout metadata, the same path
declared twice as a directory, and the early writeback of big files (its real calls seen,
and refused, by strace)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.needs import unavailable
from support.tar import TarBuilder, apply_under, apply_with

from fsnap.archive.apply import (
    ApplyResult,
    apply_headers,
    apply_layer,
    fixup_implicit,
    sync_tree,
)
from fsnap.archive.entry import Entry
from fsnap.errors import FailedPrecondition, InvalidArgument

# No mount, no registry: these tests take seconds, so a minute means a hang.
pytestmark = pytest.mark.timeout(60)

PRIVILEGED = os.geteuid() == 0


def apply(tar: TarBuilder, root: Path, max_size: int | None = None) -> dict[str, Entry]:
    result: ApplyResult = apply_layer(io.BytesIO(tar.data()), root, sync=False, max_size=max_size)
    return {e.path: e for e in result.entries}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    return r


def sized(total: int) -> TarBuilder:
    """Files declaring ``total`` bytes in all, beside a directory, a symlink and a hard
    link (which declare none)."""
    return (
        TarBuilder()
        .dir("d")
        .file("d/a", b"a" * (total - 10))
        .symlink("d/l", "a")
        .hardlink("d/h", "d/a")
        .file("d/b", b"b" * 10)
    )


def test_files_declaring_exactly_the_size_limit_apply(root: Path) -> None:
    idx = apply(sized(1000), root, max_size=1000)
    assert (idx["d/a"].size, idx["d/b"].size) == (990, 10)


def test_one_byte_over_the_size_limit_is_refused(root: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"declare over 1000 bytes \(at member 'd/b'\)"):
        apply(sized(1001), root, max_size=1000)


@pytest.mark.skipif(not PRIVILEGED, reason="sets owners")
def test_a_setgid_root_does_not_give_its_group_to_the_layer(root: Path) -> None:
    """New nodes in a setgid directory take its group: the applier must then set the
    owner the tar says even where it equals its own (root:root here)."""
    os.chown(root, 0, 50)
    os.chmod(root, 0o2775)
    apply(TarBuilder().file("f", b"x", uid=0, gid=0).dir("d", uid=0, gid=0), root)
    assert (os.lstat(root / "f").st_gid, os.lstat(root / "d").st_gid) == (0, 0)


def test_whiteout_metadata_is_ignored(root: Path) -> None:
    """``.wh..wh.`` names (aufs' hard-link and metadata files) are neither entries nor
    whiteouts, and nothing of them is written."""
    idx = apply(TarBuilder().dir("d").file("d/.wh..wh.plnk", b"aufs").file("d/f", b"f"), root)
    assert sorted(idx) == ["d", "d/f"]
    assert sorted(os.listdir(root / "d")) == ["f"]


@pytest.mark.parametrize(("first", "last"), [(0o755, 0o1777), (0o1777, 0o755), (0o2750, 0o700)])
def test_a_directory_declared_twice_keeps_the_last_metadata(
    root: Path, first: int, last: int
) -> None:
    """``/tmp`` declared twice with other modes: the last header wins, on disk too, with
    its special bits (the two headers merge: contents stay)."""
    tar = TarBuilder().dir("tmp", first).file("tmp/x", b"x").dir("tmp", last)
    idx = apply(tar, root)
    assert idx["tmp"].mode == last
    assert stat.S_IMODE(os.lstat(root / "tmp").st_mode) == last
    assert (root / "tmp/x").read_bytes() == b"x"


def test_an_implicit_root_takes_the_lower_metadata_in_the_index_only(root: Path) -> None:
    """An opaque marker at the top makes the root an implicit, opaque entry: fixing
    implicit directories up gives it the lower root's metadata in the index, and leaves
    the snapshot's own root directory alone on disk."""
    os.chmod(root, 0o700)
    result = apply_layer(io.BytesIO(TarBuilder().opaque("").data()), root, sync=False)
    lower = {"": Entry("", "dir", mode=0o1777, uid=7)}
    fixup_implicit(root, result.entries, lower.get)
    (top,) = [e for e in result.entries if e.path == ""]
    assert (top.implicit, top.opaque, top.mode, top.uid) == (True, True, 0o1777, 7)
    assert stat.S_IMODE(os.lstat(root).st_mode) == 0o700


def test_an_implicit_directory_over_a_lower_file_is_0755_root(root: Path) -> None:
    """Below, ``etc`` is a file: the implicit directory takes nothing from it."""
    result = apply_layer(io.BytesIO(TarBuilder().file("etc/x", b"x").data()), root, sync=False)
    lower = {"etc": Entry("etc", "file", mode=0o600, uid=5, gid=6, xattrs={"user.k": b"v"})}
    fixup_implicit(root, result.entries, lower.get)
    (etc,) = [e for e in result.entries if e.path == "etc"]
    assert (etc.mode, etc.uid, etc.gid, etc.xattrs) == (0o755, 0, 0, {})
    assert stat.S_IMODE(os.lstat(root / "etc").st_mode) == 0o755


def test_a_stopped_apply_ends_before_its_next_member(root: Path) -> None:
    stop = threading.Event()
    tar = TarBuilder().file("a", b"a").data()
    apply_layer(io.BytesIO(tar), root, sync=False, stop=stop)  # not set: applies
    assert (root / "a").read_bytes() == b"a"
    stop.set()
    again = root / "again"
    again.mkdir()
    with pytest.raises(FailedPrecondition, match="stopped"):
        apply_layer(io.BytesIO(tar), again, sync=False, stop=stop)
    assert os.listdir(again) == []


def test_three_links_to_a_replaced_file_keep_one_inode(root: Path) -> None:
    """The first link becomes the inode's owner in the index, the others link to it."""
    tar = (
        TarBuilder()
        .file("f", b"old", 0o600)
        .hardlink("h1", "f")
        .hardlink("h2", "f")
        .file("f", b"new")
    )
    idx = apply(tar, root)
    assert (idx["h1"].kind, idx["h1"].link, idx["h1"].size) == ("file", "", 3)
    assert (idx["h2"].kind, idx["h2"].link) == ("hardlink", "h1")
    assert os.lstat(root / "h1").st_ino == os.lstat(root / "h2").st_ino
    assert (root / "f").read_bytes() == b"new"


def test_a_link_to_a_link_names_the_first_path(root: Path) -> None:
    """A link entry is never implicit nor opaque (fixing implicit directories up would
    take it for a directory)."""
    tar = TarBuilder().file("f", b"x", 0o640).hardlink("h1", "f").hardlink("h2", "h1")
    result = apply_layer(io.BytesIO(tar.data()), root, sync=False)
    fixup_implicit(root, result.entries, lambda _: None)
    idx = {e.path: e for e in result.entries}
    assert (idx["h1"].link, idx["h2"].link) == ("f", "f")
    for name in ("h1", "h2"):
        assert (idx[name].kind, idx[name].implicit, idx[name].opaque) == ("hardlink", False, False)
        assert idx[name].mode == 0o640


def test_a_link_to_a_symlink_keeps_the_symlinks_mode(root: Path) -> None:
    """A symlink's mode is not a link header's to change (containerd: lchmod does not
    exist); owner and mtime still follow the last header, for every name."""
    tar = (
        TarBuilder()
        .symlink("s", "target")
        .hardlink("h", "s", mode=0o644, uid=7)
        .hardlink("h2", "s", mode=0o600, uid=8)
    )
    idx = apply(tar, root)
    assert (idx["s"].mode, idx["s"].uid) == (0o777, 8)
    for name in ("h", "h2"):
        assert (idx[name].kind, idx[name].link, idx[name].mode) == ("hardlink", "s", 0o777)
        assert idx[name].uid == 8


def test_links_replaced_or_gone_are_not_promoted(root: Path) -> None:
    """When ``f`` is replaced, only names still linked to it take its inode: not ``h``,
    a file of its own by then, nor ``d/g``, gone with ``d``."""
    tar = (
        TarBuilder()
        .file("f", b"old", uid=3)
        .hardlink("h", "f")
        .dir("d")
        .hardlink("d/g", "f")
        .hardlink("k", "f")
        .file("h", b"h's own", uid=4)
        .file("d", b"a file now")
        .file("f", b"new")
    )
    idx = apply(tar, root)
    assert (idx["h"].kind, idx["h"].size, idx["h"].uid) == ("file", 7, 4)
    assert (idx["k"].kind, idx["k"].size, idx["k"].uid) == ("file", 3, 3)
    assert "d/g" not in idx
    assert (root / "k").read_bytes() == b"old"


def test_a_link_to_itself_changes_nothing(root: Path) -> None:
    idx = apply(TarBuilder().file("f", b"x", 0o640).hardlink("f", "f"), root)
    assert (idx["f"].kind, idx["f"].mode) == ("file", 0o640)
    assert (root / "f").read_bytes() == b"x"


def test_an_opaque_directory_replaced_by_a_file_is_the_file(root: Path) -> None:
    """The opaque marks of a replaced directory and of what it held go with it."""
    tar = TarBuilder().dir("d").opaque("d").dir("d/e").opaque("d/e").file("d", b"file now")
    idx = apply(tar, root)
    assert sorted(idx) == ["d"]
    assert (idx["d"].kind, idx["d"].opaque) == ("file", False)
    assert (root / "d").read_bytes() == b"file now"


def test_a_directory_whited_out_then_recreated_is_opaque(root: Path) -> None:
    idx = apply(TarBuilder().whiteout("d").dir("d").file("f", b"f").whiteout("g"), root)
    assert (idx["d"].kind, idx["d"].opaque) == ("dir", True)
    assert (idx["f"].kind, idx["f"].opaque) == ("file", False)
    assert idx["g"].kind == "whiteout"


@pytest.mark.parametrize("name", [".", "./"])
def test_a_non_directory_member_naming_the_root_is_ignored(root: Path, name: str) -> None:
    idx = apply(TarBuilder().file(name, b"not the root").file("a", b"a"), root)
    assert sorted(idx) == ["a"]
    assert (root).is_dir()


def test_a_name_the_disk_refuses_is_an_invalid_archive_naming_the_member(root: Path) -> None:
    """An OSError while writing (here ENAMETOOLONG) becomes one typed line, never a raw
    error: only a full disk goes up as it is (the CLI names the store)."""
    with pytest.raises(InvalidArgument, match=r"member 'd/a{256}': File name too long"):
        apply(TarBuilder().file("d/" + "a" * 256, b"x"), root)


def test_a_hardlink_replacing_its_own_targets_directory_is_refused(root: Path) -> None:
    """``d`` -> ``d/f``: making room for ``d`` removes the target with it."""
    with pytest.raises(InvalidArgument, match=r"hardlink 'd' to 'd/f', removed by it"):
        apply(TarBuilder().dir("d").file("d/f", b"x").hardlink("d", "d/f"), root)


def test_fixing_up_refuses_an_implicit_directory_swapped_for_a_symlink(
    root: Path, tmp_path: Path
) -> None:
    """Between the apply and the fix-up the tree is the caller's: should an implicit
    directory have become a symlink, the fix-up fails as one typed error and changes
    nothing where it points (every step is opened without following links)."""
    result = apply_layer(io.BytesIO(TarBuilder().file("a/f", b"x").data()), root, sync=False)
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o700)
    shutil.rmtree(root / "a")
    (root / "a").symlink_to(outside)
    with pytest.raises(FailedPrecondition, match="implicit directory 'a'"):
        fixup_implicit(root, result.entries, lambda _: None)
    assert stat.S_IMODE(os.lstat(outside).st_mode) == 0o700


def test_a_whiteout_replaces_a_directory_made_under_its_marker_name(root: Path) -> None:
    """``d/.wh.x/f`` makes a directory ``d/.wh.x`` on the way (an implicit parent); the
    whiteout of ``d/x`` then replaces it by its marker, and the index forgets it all."""
    idx = apply(TarBuilder().file("d/.wh.x/f", b"hidden").whiteout("d/x"), root)
    assert sorted(idx) == ["d", "d/x"]
    assert idx["d/x"].kind == "whiteout"
    assert (root / "d/.wh.x").is_file()
    assert (root / "d/.wh.x").stat().st_size == 0


def test_a_hardlink_into_a_missing_directory_creates_nothing(root: Path) -> None:
    """Its target is looked up, never made: the error names the missing directory."""
    with pytest.raises(InvalidArgument, match="'nodir' does not exist in the layer"):
        apply(TarBuilder().hardlink("h", "nodir/x"), root)
    assert os.listdir(root) == []


def test_a_hardlink_replaces_a_directory_in_its_way(root: Path) -> None:
    idx = apply(TarBuilder().dir("x").file("x/y", b"y").file("f", b"f").hardlink("x", "f"), root)
    assert sorted(idx) == ["f", "x"]
    assert (idx["x"].kind, idx["x"].link) == ("hardlink", "f")
    assert os.lstat(root / "x").st_ino == os.lstat(root / "f").st_ino


def test_fixing_up_leaves_an_implicit_directorys_mtime_on_disk(root: Path) -> None:
    result = apply_layer(io.BytesIO(TarBuilder().file("a/f", b"x").data()), root, sync=False)
    os.utime(root / "a", ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))
    fixup_implicit(root, result.entries, lambda _: None)
    assert os.lstat(root / "a").st_mtime_ns == 1_600_000_000 * 10**9


def test_fixing_up_reaches_implicit_directories_after_named_ones(root: Path) -> None:
    tar = TarBuilder().dir("a").file("b/x", b"x")
    result = apply_layer(io.BytesIO(tar.data()), root, sync=False)
    lower = {"b": Entry("b", "dir", mode=0o750, uid=5, gid=6)}
    fixup_implicit(root, result.entries, lower.get)
    idx = {e.path: e for e in result.entries}
    assert (idx["b"].mode, idx["b"].uid, idx["b"].gid) == (0o750, 5, 6)
    assert stat.S_IMODE(os.lstat(root / "b").st_mode) == 0o750


def test_a_link_header_restamps_only_the_names_still_linked(root: Path) -> None:
    """``h1`` was replaced by a file of its own: a later header for ``f``'s inode reaches
    ``h2`` and leaves ``h1``'s metadata alone, in the index as on disk (it took ``h3``'s
    owner and mode in the index before, while the disk kept its own)."""
    tar = (
        TarBuilder()
        .file("f", b"x", 0o600, uid=1)
        .hardlink("h1", "f")
        .hardlink("h2", "f")
        .file("h1", b"mine", 0o640, uid=2, xattrs={"user.own": b"1"})
        .hardlink("h3", "f", mode=0o644, uid=9, xattrs={"user.link": b"2"})
    )
    idx = apply(tar, root)
    assert [idx[n].uid for n in ("f", "h1", "h2", "h3")] == [9, 2, 9, 9]
    assert (idx["h1"].kind, idx["h1"].mode, idx["h1"].xattrs) == ("file", 0o640, {"user.own": b"1"})
    assert idx["h2"].mode == 0o644
    if PRIVILEGED:
        st = os.lstat(root / "h1")
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (2, 0o640)


@pytest.mark.skipif(not PRIVILEGED, reason="drops a capability only root has")
def test_root_without_cap_mknod_leaves_placeholders(tmp_path: Path) -> None:
    """Root in a container without CAP_MKNOD: mknod is refused, so an empty file stands
    in for each device on disk; the index keeps the devices (fifos need no capability)."""
    tar_path = tmp_path / "layer.tar"
    tar = TarBuilder().char("dev/null", 1, 3).block("dev/sda", 8, 0).fifo("dev/p")
    tar_path.write_bytes(tar.data())
    root = tmp_path / "root"
    root.mkdir()
    out = apply_with(["--bounding-set=-mknod"], tar_path, root)
    idx = {e.path: e for e in (Entry.from_bytes(r.encode()) for r in out["entries"])}
    assert (idx["dev/null"].kind, idx["dev/null"].devmajor, idx["dev/null"].devminor) == (
        "char",
        1,
        3,
    )
    assert (idx["dev/sda"].kind, idx["dev/sda"].devmajor) == ("block", 8)
    for name in ("dev/null", "dev/sda"):
        st = os.lstat(root / name)
        assert stat.S_ISREG(st.st_mode)
        assert st.st_size == 0
    assert stat.S_ISFIFO(os.lstat(root / "dev/p").st_mode)


def test_sync_tree_flushes_a_directory_and_refuses_anything_else(root: Path) -> None:
    sync_tree(root)
    (root / "f").write_bytes(b"f")
    with pytest.raises(NotADirectoryError):
        sync_tree(root / "f")


def test_apply_headers_decides_privilege_from_the_user_by_default(root: Path) -> None:
    """Without ``privileged`` (as ``fsnap.lazy`` calls it), root puts owners on disk."""
    with tarfile.open(fileobj=io.BytesIO(TarBuilder().file("f", uid=1234, gid=4321).data())) as t:
        headers = t.getmembers()
    apply_headers(headers, root, lambda path: False)
    st = os.lstat(root / "f")
    expected = (1234, 4321) if PRIVILEGED else (os.getuid(), os.getgid())
    assert (st.st_uid, st.st_gid) == expected


def test_a_link_to_a_file_still_to_come_replaces_a_directory_at_its_name(root: Path) -> None:
    """``apply_headers``: a hard link to a deferred file, at the name of a directory an
    earlier header made: the directory goes with what it held, on disk and in the index."""
    tar = TarBuilder().file("f", b"data").dir("d").file("d/g", b"g").hardlink("d", "f")
    with tarfile.open(fileobj=io.BytesIO(tar.data())) as t:
        headers = t.getmembers()
    entries = {e.path: e for e in apply_headers(headers, root, lambda path: True)}
    assert sorted(entries) == ["d", "f"]
    assert (entries["d"].kind, entries["d"].link) == ("hardlink", "f")
    assert sorted(os.listdir(root)) == []


EIO_FS = Path(__file__).parent / "support" / "eio_fs.py"


@contextlib.contextmanager
def eio_mount(mnt: Path) -> Iterator[Path]:
    """``support/eio_fs.py`` mounted at ``mnt`` (its writes fail at write-back)."""
    mnt.mkdir()
    daemon = subprocess.Popen([sys.executable, str(EIO_FS), str(mnt)])
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            assert daemon.poll() is None, "eio_fs.py exited"
            assert time.monotonic() < deadline, "eio_fs.py did not mount"
            time.sleep(0.05)
        yield mnt
    finally:
        subprocess.run(["fusermount3", "-uz", str(mnt)], check=False, capture_output=True)
        try:
            daemon.wait(timeout=10)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


@pytest.mark.needs_fuse
def test_sync_tree_reports_a_failed_write_back_naming_the_root(tmp_path: Path) -> None:
    """A file system whose write-back fails (data written, then lost to EIO): the flush of
    the tree fails with the error's name and the root's, as a typed error."""
    with eio_mount(tmp_path / "mnt") as mnt:
        fd = os.open(mnt / "f", os.O_WRONLY)
        try:
            assert os.write(fd, b"x" * 4096) == 4096  # into the page cache
            with pytest.raises(FailedPrecondition) as caught:
                sync_tree(mnt)
            assert str(caught.value) == f"flushing {mnt} to disk: [Errno 5] Input/output error"
        finally:
            with contextlib.suppress(OSError):  # closing flushes again: EIO
                os.close(fd)


# -- early writeback (``_Writeback``): the real calls, seen and refused by strace ----------

BIG = 64 << 10  # a written file from this size starts its writeback at once
WRITTEN = {
    "at": b"a" * BIG,
    "under": b"u" * (BIG - 1),
    "d/over": b"o" * (3 * BIG + 1),
    "empty": b"",
}
STARTED = ", 0, 0, SYNC_FILE_RANGE_WRITE"  # sync_file_range's arguments after the fd


def writeback_layer(tmp_path: Path) -> tuple[Path, Path]:
    """The tar (as a file) of ``WRITTEN`` beside members that write no data (a directory,
    a hard link and a symlink to a big file), and an empty root to apply it into."""
    tar = TarBuilder().dir("d")
    for name, data in WRITTEN.items():
        tar.file(name, data)
    tar.hardlink("link", "at").symlink("s", "at")
    tar_path = tmp_path / "layer.tar"
    tar_path.write_bytes(tar.data())
    root = tmp_path / "root"
    root.mkdir()
    return tar_path, root


def assert_applied(root: Path) -> None:
    assert {name: (root / name).read_bytes() for name in WRITTEN} == WRITTEN
    assert os.lstat(root / "link").st_ino == os.lstat(root / "at").st_ino
    assert os.readlink(root / "s") == "at"


def traced_flushes(tmp_path: Path, *inject: str) -> list[tuple[str, str, str, str]]:
    """Apply ``writeback_layer`` with its flush in a subprocess under strace (``inject``:
    strace's options that make a call fail for real); its ``sync_file_range`` and
    ``syncfs`` calls as (call, path under the root, arguments after the fd, result)."""
    if shutil.which("strace") is None:
        unavailable("strace is not installed (package strace)")
    tar_path, root = writeback_layer(tmp_path)
    log = tmp_path / "strace.log"
    trace = ["-e", "trace=sync_file_range,syncfs", "-e", "signal=none", *inject]
    apply_under(["strace", "-f", "-qq", "-y", "-o", str(log), *trace], tar_path, root)
    assert_applied(root)
    calls = []
    for line in log.read_text().splitlines():
        found = re.search(r"(sync_file_range|syncfs)\(\d+<([^>]*)>(.*)\) += (.+)$", line)
        assert found is not None, line
        call, path, args, result = found.groups()
        calls.append((call, os.path.relpath(path, root), args, result))
    return calls


def test_each_file_of_64_kib_or_more_starts_its_writeback_once_written(tmp_path: Path) -> None:
    """``sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)`` on each file written with
    64 KiB or more (at the boundary too), none on a smaller one; the flush follows."""
    assert traced_flushes(tmp_path) == [
        ("sync_file_range", "at", STARTED, "0"),
        ("sync_file_range", "d/over", STARTED, "0"),
        ("syncfs", ".", "", "0"),
    ]


@pytest.mark.parametrize("refusal", ["EINVAL", "ENOSYS", "EOPNOTSUPP"])
def test_a_refused_writeback_is_asked_once_and_the_flush_stays(
    tmp_path: Path, refusal: str
) -> None:
    """A kernel, file system or sandbox refusing ``sync_file_range`` (strace fails the
    real call): the layer asks once, applies all the same, and is flushed as before."""
    calls = traced_flushes(tmp_path, "-e", f"inject=sync_file_range:error={refusal}")
    assert [c[:3] for c in calls] == [("sync_file_range", "at", STARTED), ("syncfs", ".", "")]
    assert calls[0][3].startswith(f"-1 {refusal} ")
    assert calls[0][3].endswith(" (INJECTED)")
    assert calls[1][3] == "0"


WITHOUT_THE_CALL = """
import ctypes, json, sys
from pathlib import Path
from fsnap.archive import apply

class Libc:
    '''The C library without sync_file_range (glibc before 2.6), counting its look-ups.'''
    def __init__(self):
        self.real = ctypes.CDLL(None, use_errno=True)
        self.lookups = 0
    def __getattr__(self, name):
        if name == "sync_file_range":
            self.lookups += 1
            raise AttributeError(name)
        return getattr(self.real, name)

libc = Libc()
apply._libc = lambda: libc
with open(sys.argv[1], "rb") as f:
    result = apply.apply_layer(f, Path(sys.argv[2]))
print(json.dumps({"lookups": libc.lookups, "size": result.size}))
"""


def test_a_libc_without_sync_file_range_applies_the_layer(tmp_path: Path) -> None:
    """In a process whose C library lacks the call, the layer looks it up once and
    applies all the same (flushed by ``syncfs``, which it has)."""
    tar_path, root = writeback_layer(tmp_path)
    out = apply_under([], tar_path, root, runner=WITHOUT_THE_CALL)
    assert out == {"lookups": 1, "size": tar_path.stat().st_size}
    assert_applied(root)
