"""Applying layer tars: every attribute the tar carries ends up in the index, and on disk as
far as the applying user may put it (as root in-process; as uid 65534 in a subprocess)."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import logging
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard
from support.tar import EPOCH, TarBuilder, apply_as, binary_str

from fsnap.archive.apply import ApplyResult, apply_headers, apply_layer, fixup_implicit
from fsnap.archive.compression import Compression, compress_writer, open_uncompressed
from fsnap.archive.entry import Entry
from fsnap.archive.reader import LayerStream
from fsnap.errors import InvalidArgument
from fsnap.oci import OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD

# No mount, no registry: these tests take seconds, so a minute means a hang.
pytestmark = pytest.mark.timeout(60)

NOBODY = 65534
# vfs capability v2 (cap_setgid, cap_setuid permitted): 0xc0 makes it invalid UTF-8
CAPABILITY = b"\x01\x00\x00\x02\xc0\x00\x00\x00" + b"\x00" * 12
XATTRS = {"user.note": b"\xff\x00binary", "trusted.t": b"tv", "security.capability": CAPABILITY}


def apply(data: bytes, root: Path, *, privileged: bool | None = None) -> ApplyResult:
    return apply_layer(io.BytesIO(data), root, sync=False, privileged=privileged)


def index(result: ApplyResult) -> dict[str, Entry]:
    by_path = {e.path: e for e in result.entries}
    assert len(by_path) == len(result.entries), "one entry per path"
    return by_path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    return r


def test_file_metadata_as_root(root: Path) -> None:
    tar = TarBuilder().file(
        "bin/tool", b"#!x", 0o4755, uid=1234, gid=5678, mtime="1700000000.123456789", xattrs=XATTRS
    )
    e = index(apply(tar.data(), root))["bin/tool"]
    assert (e.kind, e.mode, e.uid, e.gid, e.size) == ("file", 0o4755, 1234, 5678, 3)
    assert e.mtime == 1_700_000_000_123_456_789
    assert e.xattrs == XATTRS
    st = os.lstat(root / "bin/tool")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o4755, 1234, 5678)
    assert st.st_mtime_ns == 1_700_000_000_123_456_789
    assert (root / "bin/tool").read_bytes() == b"#!x"
    for key, value in XATTRS.items():
        assert os.getxattr(root / "bin/tool", key) == value


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax", "gnu"])
def test_big_numeric_owners_and_names_not_used(root: Path, fmt: int) -> None:
    tar = TarBuilder(fmt).file("f", b"x", uid=3_000_000, gid=4_000_000)
    e = index(apply(tar.data(), root))["f"]
    assert (e.uid, e.gid) == (3_000_000, 4_000_000)
    assert (os.lstat(root / "f").st_uid, os.lstat(root / "f").st_gid) == (3_000_000, 4_000_000)


def test_node_kinds_as_root(root: Path) -> None:
    tar = (
        TarBuilder()
        .dir("tmp", 0o1777)
        .dir("srv", 0o2750, uid=7, gid=8)
        .file("srv/data", b"payload", 0o640)
        .hardlink("srv/again", "srv/data")
        .symlink("srv/link", "../etc/missing")
        .hardlink("srv/link2", "srv/link")
        .fifo("run/pipe", 0o620)
        .char("dev/null", 1, 3, 0o666)
        .block("dev/loop0", 7, 0, 0o660)
    )
    idx = index(apply(tar.data(), root))
    assert stat.S_IMODE(os.lstat(root / "tmp").st_mode) == 0o1777
    srv = os.lstat(root / "srv")
    assert (stat.S_IMODE(srv.st_mode), srv.st_uid, srv.st_gid) == (0o2750, 7, 8)
    assert srv.st_mtime_ns == EPOCH * 10**9  # set after its children were written
    assert os.lstat(root / "srv/again").st_ino == os.lstat(root / "srv/data").st_ino
    assert (idx["srv/again"].kind, idx["srv/again"].link, idx["srv/again"].size) == (
        "hardlink",
        "srv/data",
        7,
    )
    assert os.readlink(root / "srv/link") == "../etc/missing"
    assert os.lstat(root / "srv/link2").st_ino == os.lstat(root / "srv/link").st_ino
    assert stat.S_ISFIFO(os.lstat(root / "run/pipe").st_mode)
    assert stat.S_IMODE(os.lstat(root / "run/pipe").st_mode) == 0o620
    null = os.lstat(root / "dev/null")
    assert stat.S_ISCHR(null.st_mode)
    assert null.st_rdev == os.makedev(1, 3)
    assert stat.S_ISBLK(os.lstat(root / "dev/loop0").st_mode)
    assert (idx["dev/null"].kind, idx["dev/null"].devmajor, idx["dev/null"].devminor) == (
        "char",
        1,
        3,
    )
    assert (idx["dev/loop0"].kind, idx["dev/loop0"].devmajor) == ("block", 7)
    assert idx["run/pipe"].kind == "fifo"
    assert idx["run"].implicit


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax", "gnu"])
def test_long_and_non_utf8_names(root: Path, fmt: int) -> None:
    long_path = "/".join(["d" * 150, "e" * 200, "f" * 250])
    odd = binary_str(b"caf\xe9/na\xefve\xff")
    tar = TarBuilder(fmt).file(long_path, b"long").file(odd, b"latin1").symlink("l", odd)
    idx = index(apply(tar.data(), root))
    assert (root / long_path).read_bytes() == b"long"
    assert idx[long_path].kind == "file"
    assert os.fsencode(odd) in [os.fsencode(p) for p in idx]
    assert (root / os.fsencode(odd).decode("utf-8", "surrogateescape")).read_bytes() == b"latin1"
    assert os.readlink(os.fsencode(root) + b"/l") == b"caf\xe9/na\xefve\xff"
    assert idx["l"].link == odd


def test_entries_before_their_parents(root: Path) -> None:
    tar = TarBuilder().file("a/b/c", b"c", 0o600).dir("a/b", 0o750, uid=3).dir("a", 0o711)
    idx = index(apply(tar.data(), root))
    assert not idx["a"].implicit
    assert not idx["a/b"].implicit
    assert (idx["a/b"].mode, idx["a/b"].uid) == (0o750, 3)
    assert stat.S_IMODE(os.lstat(root / "a").st_mode) == 0o711
    assert os.lstat(root / "a/b").st_uid == 3
    assert (root / "a/b/c").read_bytes() == b"c"


def test_implicit_parents_take_the_lower_layers_metadata(root: Path) -> None:
    result = apply(TarBuilder().file("usr/local/bin/x", b"x").data(), root)
    idx = index(result)
    assert [p for p, e in idx.items() if e.implicit] == ["usr", "usr/local", "usr/local/bin"]
    lower = {"usr": Entry("usr", "dir", mode=0o700, uid=5, gid=6, xattrs={"user.k": b"v"})}
    fixup_implicit(root, result.entries, lower.get)
    assert (idx["usr"].mode, idx["usr"].uid, idx["usr"].gid) == (0o700, 5, 6)
    assert idx["usr"].xattrs == {"user.k": b"v"}
    assert (idx["usr/local"].mode, idx["usr/local"].uid) == (0o755, 0)
    st = os.lstat(root / "usr")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o700, 5, 6)
    assert os.getxattr(root / "usr", "user.k") == b"v"
    assert stat.S_IMODE(os.lstat(root / "usr/local").st_mode) == 0o755


def test_duplicate_entries_last_wins(root: Path) -> None:
    tar = TarBuilder().file("f", b"first", 0o600).file("f", b"second", 0o644, uid=9)
    idx = index(apply(tar.data(), root))
    assert (root / "f").read_bytes() == b"second"
    assert (idx["f"].mode, idx["f"].uid, idx["f"].size) == (0o644, 9, 6)


def test_file_replaces_directory_and_back(root: Path) -> None:
    tar = (
        TarBuilder()
        .dir("d")
        .file("d/inner", b"gone")
        .dir("d/sub")
        .file("d", b"now a file")
        .file("e", b"a file first")
        .dir("e", 0o700)
        .file("e/child", b"kept")
    )
    idx = index(apply(tar.data(), root))
    assert (root / "d").read_bytes() == b"now a file"
    assert idx["d"].kind == "file"
    assert not [p for p in idx if p.startswith("d/")]
    assert (root / "e").is_dir()
    assert (root / "e/child").read_bytes() == b"kept"
    assert idx["e"].kind == "dir"
    assert idx["e"].mode == 0o700


def test_hardlinked_path_replaced_keeps_its_inode_in_the_index(root: Path) -> None:
    tar = (
        TarBuilder()
        .file("a", b"old", 0o600, uid=4)
        .hardlink("b", "a", mode=0o600, uid=4)
        .file("a", b"new")
    )
    idx = index(apply(tar.data(), root))
    assert (root / "b").read_bytes() == b"old"
    assert (root / "a").read_bytes() == b"new"
    assert (idx["b"].kind, idx["b"].uid, idx["b"].size) == ("file", 4, 3)


def test_hardlink_header_metadata_wins_for_the_whole_inode(root: Path) -> None:
    """As containerd: a link header's owner, mode and mtime are applied to the shared inode."""
    tar = (
        TarBuilder()
        .file("a", b"data", 0o600, uid=9, gid=9, mtime=1_700_000_000)
        .hardlink("b", "a", mode=0o644, uid=0, gid=0, mtime=1_700_000_500)
    )
    idx = index(apply(tar.data(), root))
    for name in ("a", "b"):
        assert (idx[name].mode, idx[name].uid, idx[name].gid) == (0o644, 0, 0)
        assert idx[name].mtime == 1_700_000_500 * 10**9
    st = os.lstat(root / "a")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_mtime_ns) == (
        0o644,
        0,
        1_700_000_500 * 10**9,
    )


def test_whiteouts_and_opaque_directories(root: Path) -> None:
    tar = (
        TarBuilder()
        .whiteout("gone")
        .opaque("etc")  # before the directory's own entry
        .dir("etc", 0o751)
        .file("etc/kept", b"k")
        .opaque("var/cache")  # a directory the tar never names
        .whiteout("lib/old")
        .whiteout("again")
        .dir("again")  # deleted below, recreated here: nothing of the lower shows
    )
    idx = index(apply(tar.data(), root))
    assert idx["gone"].kind == "whiteout"
    assert idx["lib/old"].kind == "whiteout"
    assert idx["etc"].opaque
    assert idx["etc"].mode == 0o751
    assert not idx["etc"].implicit
    assert idx["var/cache"].opaque
    assert idx["var/cache"].implicit
    assert idx["again"].kind == "dir"
    assert idx["again"].opaque
    for marker in (".wh.gone", "etc/.wh..wh..opq", "var/cache/.wh..wh..opq", "lib/.wh.old"):
        assert (root / marker).is_file()
        assert (root / marker).stat().st_size == 0
    assert ".wh.gone" not in idx
    assert "etc/.wh..wh..opq" not in idx


@pytest.mark.parametrize(
    ("kind", "label"),
    [
        (Compression.NONE, OCI_LAYER),
        (Compression.GZIP, OCI_LAYER_GZIP),
        (Compression.ZSTD, OCI_LAYER_ZSTD),
        (Compression.GZIP, OCI_LAYER),  # mislabelled: the magic wins
        (Compression.ZSTD, OCI_LAYER_GZIP),
        (Compression.NONE, OCI_LAYER_ZSTD),
    ],
)
def test_diff_id_is_sha256_of_all_uncompressed_bytes(
    root: Path, kind: Compression, label: str
) -> None:
    tar = TarBuilder().file("big", os.urandom(3 << 20)).file("small", b"s").data(b"\0" * 10240)
    blob = io.BytesIO()
    with compress_writer(kind, blob) as w:
        w.write(tar)
    result = apply_layer(open_uncompressed(io.BytesIO(blob.getvalue()), label), root, sync=True)
    assert result.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    assert result.size == len(tar)
    assert (root / "small").read_bytes() == b"s"


def test_multi_member_gzip_and_multi_frame_zstd(root: Path, tmp_path: Path) -> None:
    tar = TarBuilder().file("a", b"a" * 100_000).file("b", b"b").data()
    half = len(tar) // 2
    gz = gzip.compress(tar[:half]) + gzip.compress(tar[half:])
    zs = zstandard.ZstdCompressor().compress(tar[:half]) + zstandard.ZstdCompressor().compress(
        tar[half:]
    )
    for blob, label in ((gz, OCI_LAYER_GZIP), (zs, OCI_LAYER_ZSTD)):
        out = tmp_path / label.rsplit("+", 1)[-1]
        out.mkdir()
        result = apply_layer(open_uncompressed(io.BytesIO(blob), label), out, sync=False)
        assert result.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
        assert (out / "b").read_bytes() == b"b"


def test_invalid_archives_are_rejected(tmp_path: Path) -> None:
    good = TarBuilder().file("f", os.urandom(4096)).data()
    cases = {
        "truncated": good[:1200],
        "not a tar": b"hello, this is not a tar" * 100,
        "hardlink to a missing path": TarBuilder().hardlink("l", "nowhere").data(),
        "hardlink to a directory": TarBuilder().dir("d").hardlink("l", "d").data(),
        "symlink loop in a path": TarBuilder()
        .symlink("a", "b")
        .symlink("b", "a")
        .file("a/x")
        .data(),
    }
    for name, data in cases.items():
        out = tmp_path / name.replace(" ", "-")
        out.mkdir()
        with pytest.raises(InvalidArgument, match="invalid archive"):
            apply(data, out)
    with pytest.raises(InvalidArgument, match="truncated gzip"):
        open_uncompressed(io.BytesIO(gzip.compress(good)[:-100]), OCI_LAYER_GZIP).read()


def test_unprivileged_mode_keeps_the_truth_in_the_index(root: Path) -> None:
    tar = (
        TarBuilder()
        .file("f", b"x", 0o4700, uid=10, xattrs=XATTRS)
        .dir("ro", 0o500)
        .file("ro/in", b"y", 0o400)
        .char("null", 1, 3)
    )
    idx = index(apply(tar.data(), root, privileged=False))
    assert (idx["f"].mode, idx["f"].uid, idx["f"].xattrs) == (0o4700, 10, XATTRS)
    assert stat.S_IMODE(os.lstat(root / "f").st_mode) == 0o700
    assert os.lstat(root / "f").st_uid == 0  # the applying user, not the tar's
    assert os.listxattr(root / "f") == ["user.note"]
    assert stat.S_IMODE(os.lstat(root / "ro").st_mode) == 0o700
    assert stat.S_IMODE(os.lstat(root / "ro/in").st_mode) == 0o600
    assert stat.S_ISREG(os.lstat(root / "null").st_mode)
    assert idx["null"].kind == "char"


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A directory uid 65534 can reach (pytest's tmp_path is 0700 root)."""
    top = Path(tempfile.mkdtemp(prefix="fsnap-nobody-"))
    try:
        top.chmod(0o755)
        (top / "root").mkdir()
        os.chown(top / "root", NOBODY, NOBODY)
        yield top
    finally:
        shutil.rmtree(top)


def test_apply_as_an_unprivileged_user(nobody_dir: Path) -> None:
    tar = (
        TarBuilder()
        .dir("etc", 0o755, uid=0)
        .file("etc/shadow", b"secret", 0o640, uid=0, gid=42)
        .file("usr/bin/ping", b"\x7fELF", 0o4755, xattrs=XATTRS)
        .dir("locked", 0o000, uid=1000, gid=1000)
        .file("locked/inside", b"in", 0o000, uid=1000)
        .char("dev/null", 1, 3, 0o666)
        .block("dev/sda", 8, 0)
        .fifo("dev/initctl", 0o600)
        .symlink("etc/localtime", "/usr/share/zoneinfo/UTC")
        .hardlink("usr/bin/ping6", "usr/bin/ping")
        .whiteout("opt/old")
        .dir("tmp", 0o1777)  # created owner-only (a chmod sets it): the owner can fill it
        .file("tmp/x", b"x")
    )
    data = tar.data(b"\0" * 4096)
    (nobody_dir / "layer.tar").write_bytes(data)
    root = nobody_dir / "root"
    out = apply_as(NOBODY, NOBODY, nobody_dir / "layer.tar", root)

    assert out["diff_id"] == "sha256:" + hashlib.sha256(data).hexdigest()
    idx = {e.path: e for e in (Entry.from_bytes(r.encode()) for r in out["entries"])}
    assert (idx["etc/shadow"].mode, idx["etc/shadow"].gid) == (0o640, 42)
    assert (idx["usr/bin/ping"].mode, idx["usr/bin/ping"].xattrs) == (0o4755, XATTRS)
    assert (idx["locked"].mode, idx["locked"].uid) == (0, 1000)
    assert (idx["dev/null"].kind, idx["dev/null"].devmajor, idx["dev/null"].devminor) == (
        "char",
        1,
        3,
    )
    assert (idx["dev/sda"].kind, idx["dev/sda"].devmajor) == ("block", 8)
    assert idx["dev/initctl"].kind == "fifo"
    assert idx["opt/old"].kind == "whiteout"
    assert idx["usr/bin/ping6"].link == "usr/bin/ping"
    assert idx["tmp"].mode == 0o1777

    # the disk holds the contents, owned by the applying user and readable by it
    assert (root / "etc/shadow").read_bytes() == b"secret"
    assert (root / "locked/inside").read_bytes() == b"in"
    for path in ("etc/shadow", "locked", "locked/inside", "dev/null", "usr/bin/ping"):
        st = os.lstat(root / path)
        assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY)
        assert st.st_mode & 0o600 == 0o600
    assert stat.S_ISREG(os.lstat(root / "dev/null").st_mode)  # placeholder, no mknod
    assert stat.S_ISFIFO(os.lstat(root / "dev/initctl").st_mode)
    assert os.listxattr(root / "usr/bin/ping") == ["user.note"]
    assert os.lstat(root / "usr/bin/ping6").st_ino == os.lstat(root / "usr/bin/ping").st_ino
    assert os.readlink(root / "etc/localtime") == "/usr/share/zoneinfo/UTC"
    assert (root / "tmp/x").read_bytes() == b"x"


@pytest.mark.parametrize("fmt", ["gnu", "posix"])
def test_sparse_files_written_by_gnu_tar(root: Path, tmp_path: Path, fmt: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse", "wb") as f:
        f.write(b"head")
        f.truncate(5 << 20)
        f.seek(0, os.SEEK_END)
        f.write(b"tail")
    tar_path = tmp_path / "sparse.tar"
    subprocess.run(
        ["tar", "--sparse", f"--format={fmt}", "-cf", str(tar_path), "-C", str(src), "sparse"],
        check=True,
    )
    result = apply(tar_path.read_bytes(), root)
    assert (root / "sparse").read_bytes() == (src / "sparse").read_bytes()
    assert index(result)["sparse"].size == (5 << 20) + 4
    assert result.diff_id == "sha256:" + hashlib.sha256(tar_path.read_bytes()).hexdigest()


def test_a_mislabelled_blob_is_reported_in_the_debug_log(caplog: pytest.LogCaptureFixture) -> None:
    blob = gzip.compress(b"not really a tar")
    with caplog.at_level(logging.DEBUG, logger="fsnap.archive.compression"):
        assert open_uncompressed(io.BytesIO(blob), OCI_LAYER).read() == b"not really a tar"
    assert "gzip-compressed by its magic bytes" in caplog.text


def test_layer_stream_only_moves_forward() -> None:
    stream = LayerStream(io.BytesIO(b"0123456789"))
    assert stream.read(2) == b"01"
    assert stream.seek(5) == 5
    assert stream.read(1) == b"5"
    with pytest.raises(io.UnsupportedOperation):
        stream.seek(0)
    stream.drain()
    assert stream.size == 10
    assert stream.digest() == "sha256:" + hashlib.sha256(b"0123456789").hexdigest()


def test_members_naming_the_root_change_only_the_index(root: Path) -> None:
    root.chmod(0o755)
    tar = TarBuilder().dir("./", 0o700, uid=5).file("..", b"x").symlink("/", "/etc").file("a", b"a")
    idx = index(apply(tar.data(), root))
    assert (idx[""].kind, idx[""].mode, idx[""].uid) == ("dir", 0o700, 5)
    st = os.lstat(root)
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o755, 0)
    assert sorted(os.listdir(root)) == ["a"]


# Layers whose paths change kind or owner midway: ``apply_headers`` (files deferred) must
# agree with a full apply on every one of them.
DEFERRAL_CASES = {
    "last wins": lambda: TarBuilder().file("f", b"first", 0o600).file("f", b"2nd", uid=9),
    "file and directory swap": lambda: (
        TarBuilder()
        .dir("d")
        .file("d/inner", b"gone")
        .file("d", b"now a file")
        .file("e", b"a file first")
        .dir("e", 0o700)
        .file("e/child", b"kept")
    ),
    "a file becomes a parent": lambda: TarBuilder().file("x", b"data").file("x/y", b"inner"),
    "hardlinked path replaced": lambda: (
        TarBuilder().file("a", b"old", 0o600, uid=4).hardlink("b", "a").file("a", b"new")
    ),
    "link chain, target becomes a dir": lambda: (
        TarBuilder().file("a", b"data").hardlink("b", "a").hardlink("c", "b").dir("a")
    ),
    "link header restamps": lambda: (
        TarBuilder().file("a", b"data", 0o600, uid=9).hardlink("b", "a", mode=0o644, uid=0)
    ),
    "empty files, links, nodes, whiteouts": lambda: (
        TarBuilder()
        .file("empty")
        .hardlink("empty2", "empty")
        .symlink("s", "a")
        .fifo("p")
        .whiteout("gone")
        .opaque("etc")
        .file("etc/conf", b"c")
        .hardlink("etc/conf2", "etc/conf")
        .file("etc/conf2", b"replaced")
    ),
}


@pytest.mark.parametrize("case", DEFERRAL_CASES)
def test_apply_headers_defers_files_and_agrees_with_a_full_apply(case: str, tmp_path: Path) -> None:
    data = DEFERRAL_CASES[case]().data()
    full_root, lazy_root = tmp_path / "full", tmp_path / "lazy"
    full_root.mkdir()
    lazy_root.mkdir()
    full = index(apply(data, full_root))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        headers = tar.getmembers()
    lazy = {e.path: e for e in apply_headers(headers, lazy_root, lambda path: True)}

    def same(e: Entry) -> Entry:  # an implicit directory's mtime is when it was made
        return dataclasses.replace(e, mtime=0) if e.implicit else e

    assert {p: same(e) for p, e in lazy.items()} == {p: same(e) for p, e in full.items()}
    deferred = {p for p, e in full.items() if e.kind in ("file", "hardlink") and e.size}
    assert deferred, "the case defers nothing: it proves nothing"
    on_disk = set(_tree(full_root))
    assert set(_tree(lazy_root)) == on_disk - deferred
    for path in on_disk - deferred:
        assert os.lstat(lazy_root / path).st_mode == os.lstat(full_root / path).st_mode, path


def _tree(root: Path) -> list[str]:
    """Every path under ``root`` (not following symlinks), relative to it."""
    out = []
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            out.append(os.path.relpath(os.path.join(top, name), root))
    return out
