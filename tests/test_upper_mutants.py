"""The upper directory's disk operations called directly (no mount, no union): each test
pins down a rule of ``fsnap/mount/upper.py`` that a mutant broke without another test
noticing (issue 18), so the mutation run of ``upper`` kills them in a second."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from fsnap.archive.entry import Entry
from fsnap.archive.format import OPAQUE_MARKER
from fsnap.mount.upper import Upper, join

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="owners, devices and trusted xattrs need root")


def upper_at(tmp: Path, privileged: bool = ROOT) -> Upper:
    fs, work = tmp / "snap" / "fs", tmp / "snap" / "work"
    fs.mkdir(parents=True)
    upper = Upper(fs, work, privileged)
    upper.clear_work()
    return upper


def fs_of(upper: Upper) -> Path:
    return Path(os.fsdecode(upper.fs))


def work_of(upper: Upper) -> Path:
    return Path(os.fsdecode(upper.work))


def test_join_and_path() -> None:
    assert join(b"", b"a") == b"a"
    assert join(b"a/b", b"c") == b"a/b/c"
    upper = Upper(Path("/x/fs"), Path("/x/work"), True)
    assert upper.path(b"") == b"/x/fs"
    assert upper.path(b"a/b") == b"/x/fs/a/b"


def test_disk_modes_and_overrides_of_an_unprivileged_daemon(tmp_path: Path) -> None:
    upper = upper_at(tmp_path, privileged=False)
    uid, gid = os.geteuid(), os.getegid()
    assert upper.disk_mode(Entry("f", "file", mode=0o4640)) == 0o4640
    assert upper.disk_mode(Entry("f", "file", mode=0o040)) == 0o640
    assert upper.disk_mode(Entry("d", "dir", mode=0o055)) == 0o755
    assert upper.disk_mode(Entry("d", "dir", mode=0o1000 | 0o70000)) == 0o1700
    assert not upper.needs_override(Entry("f", "file", mode=0o644, uid=uid, gid=gid))
    assert not upper.needs_override(Entry("d", "dir", mode=0o755, uid=uid, gid=gid))
    assert not upper.needs_override(Entry("s", "symlink", mode=0o777, uid=uid, gid=gid))
    assert not upper.needs_override(Entry("p", "fifo", mode=0o600, uid=uid, gid=gid))
    assert upper.needs_override(Entry("f", "file", mode=0o444, uid=uid, gid=gid))  # no w bit for us
    assert upper.needs_override(Entry("d", "dir", mode=0o555, uid=uid, gid=gid))
    assert upper.needs_override(Entry("f", "file", mode=0o644, uid=uid + 1, gid=gid))
    assert upper.needs_override(Entry("f", "file", mode=0o644, uid=uid, gid=gid + 1))
    assert upper.needs_override(
        Entry("f", "file", mode=0o644, xattrs={"user.a": b"1"}, uid=uid, gid=gid)
    )
    assert upper.needs_override(Entry("c", "char", mode=0o600, uid=uid, gid=gid))
    assert upper.needs_override(Entry("b", "block", mode=0o600, uid=uid, gid=gid))
    privileged = Upper(tmp_path, tmp_path, True)
    assert privileged.disk_mode(Entry("f", "file", mode=0o040)) == 0o040
    assert privileged.disk_mode(Entry("f", "file", mode=0o170755)) == 0o755
    assert not privileged.needs_override(Entry("c", "char", mode=0o444, uid=7, xattrs={"a": b""}))


def test_clear_work_makes_a_private_work_directory_and_empties_it(tmp_path: Path) -> None:
    upper = Upper(tmp_path / "fs", tmp_path / "work", ROOT)
    upper.clear_work()
    assert stat.S_IMODE(os.stat(tmp_path / "work").st_mode) == 0o700
    (tmp_path / "work" / "new-1").mkdir()
    (tmp_path / "work" / "new-1" / "f").write_bytes(b"x")
    (tmp_path / "work" / "new-2").write_bytes(b"x")
    upper.clear_work()
    assert os.listdir(tmp_path / "work") == []


def test_place_builds_each_kind_with_its_metadata(tmp_path: Path) -> None:
    upper = upper_at(tmp_path)
    fs = fs_of(upper)
    source = tmp_path / "content"
    source.write_bytes(b"content")
    upper.place(b"f", Entry("f", "file", mode=0o640, mtime=5_000_000_000, atime=7), str(source))
    upper.place(b"e", Entry("e", "file", mode=0o600, mtime=3))
    upper.place(b"d", Entry("d", "dir", mode=0o750, mtime=9))
    upper.place(b"d/o", Entry("d/o", "dir", mode=0o755), opaque=True)
    upper.place(b"s", Entry("s", "symlink", mode=0o777, link="f", mtime=11))
    upper.place(b"p", Entry("p", "fifo", mode=0o604))
    upper.place(b"k", Entry("k", "socket", mode=0o700))
    st, empty = os.lstat(fs / "f"), os.lstat(fs / "e")  # before a read changes atime
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_atime_ns) == (0o640, 5_000_000_000, 7)
    assert (empty.st_atime_ns, empty.st_mtime_ns, empty.st_size) == (3, 3, 0)
    assert (fs / "f").read_bytes() == b"content"
    assert stat.S_ISDIR(os.lstat(fs / "d").st_mode)
    assert stat.S_IMODE(os.lstat(fs / "d").st_mode) == 0o750
    assert (fs / "d/o" / OPAQUE_MARKER).exists()
    assert not (fs / "d" / OPAQUE_MARKER).exists()
    assert os.readlink(fs / "s") == "f"
    assert os.lstat(fs / "s").st_mtime_ns == 11
    assert stat.S_ISFIFO(os.lstat(fs / "p").st_mode)
    assert stat.S_IMODE(os.lstat(fs / "p").st_mode) == 0o604
    assert stat.S_ISSOCK(os.lstat(fs / "k").st_mode)
    assert os.listdir(work_of(upper)) == []


@needs_root
def test_devices_on_disk_only_for_a_privileged_daemon(tmp_path: Path) -> None:
    upper = upper_at(tmp_path / "p", privileged=True)
    upper.place(b"c", Entry("c", "char", mode=0o620, devmajor=1, devminor=3, uid=3, gid=4))
    st = os.lstat(fs_of(upper) / "c")
    assert stat.S_ISCHR(st.st_mode)
    assert st.st_rdev == os.makedev(1, 3)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (3, 4, 0o620)
    upper.place(b"b", Entry("b", "block", mode=0o600, devmajor=7, devminor=0))
    assert stat.S_ISBLK(os.lstat(fs_of(upper) / "b").st_mode)
    unprivileged = upper_at(tmp_path / "u", privileged=False)
    unprivileged.place(b"c", Entry("c", "char", mode=0o620, devmajor=1, devminor=3))
    st = os.lstat(fs_of(unprivileged) / "c")
    assert stat.S_ISREG(st.st_mode)
    assert st.st_size == 0
    assert stat.S_IMODE(st.st_mode) == 0o620
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())  # no chown either


def test_a_failed_place_leaves_nothing_in_work(tmp_path: Path) -> None:
    upper = upper_at(tmp_path)
    with pytest.raises(FileNotFoundError):
        upper.place(b"f", Entry("f", "file"), str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError):  # its directory is not there
        upper.place(b"no/d", Entry("no/d", "dir"))
    assert os.listdir(work_of(upper)) == []
    assert os.listdir(fs_of(upper)) == []


@needs_root
def test_apply_sets_owner_before_mode_and_exactly_the_xattrs(tmp_path: Path) -> None:
    upper = upper_at(tmp_path, privileged=True)
    fs = fs_of(upper)
    (fs / "f").write_bytes(b"x")
    os.setxattr(fs / "f", "user.old", b"1")
    os.setxattr(fs / "f", "user.keep", b"0")
    entry = Entry(
        "f", "file", mode=0o4755, uid=5, gid=6, mtime=8, xattrs={"user.keep": b"2", "user.n": b"3"}
    )
    upper.apply_at(b"f", entry)
    st = os.lstat(fs / "f")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (5, 6, 0o4755)
    assert sorted(os.listxattr(fs / "f")) == ["user.keep", "user.n"]
    assert os.getxattr(fs / "f", "user.keep") == b"2"
    assert st.st_mtime_ns == 8
    os.utime(fs / "f", ns=(1, 2))
    upper.apply_at(b"f", Entry("f", "file", mode=0o600, uid=5, gid=6, mtime=99), times=False)
    st = os.lstat(fs / "f")
    assert (st.st_atime_ns, st.st_mtime_ns, stat.S_IMODE(st.st_mode)) == (1, 2, 0o600)
    assert os.listxattr(fs / "f") == []
    # a symlink: owner and times, and no chmod through it to its target
    os.symlink("f", fs / "s")
    upper.apply_at(b"s", Entry("s", "symlink", mode=0o777, uid=9, gid=9, mtime=4))
    assert (os.lstat(fs / "s").st_uid, os.lstat(fs / "s").st_mtime_ns) == (9, 4)
    assert stat.S_IMODE(os.lstat(fs / "f").st_mode) == 0o600


@needs_root
def test_apply_keeps_the_markers_own_xattrs(tmp_path: Path) -> None:
    from fsnap.archive.format import OverlayMarkers

    fs, work = tmp_path / "fs", tmp_path / "work"
    fs.mkdir()
    upper = Upper(fs, work, True, OverlayMarkers(privileged=True))
    upper.clear_work()
    upper.place(b"d", Entry("d", "dir", mode=0o755), opaque=True)
    upper.apply_at(b"d", Entry("d", "dir", mode=0o700))
    assert os.getxattr(fs / "d", "trusted.overlay.opaque") == b"y"


def test_unprivileged_apply_keeps_owner_and_xattrs_as_they_are(tmp_path: Path) -> None:
    upper = upper_at(tmp_path, privileged=False)
    fs = fs_of(upper)
    (fs / "f").write_bytes(b"x")
    os.setxattr(fs / "f", "user.old", b"1")
    upper.apply_at(b"f", Entry("f", "file", mode=0o444, uid=5, gid=6, xattrs={"user.n": b"3"}))
    st = os.lstat(fs / "f")
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())
    assert stat.S_IMODE(st.st_mode) == 0o644
    assert os.listxattr(fs / "f") == ["user.old"]


def test_copy_up_and_link_up_keep_the_directory_times(tmp_path: Path) -> None:
    upper = upper_at(tmp_path)
    fs = fs_of(upper)
    (fs / "d").mkdir()
    os.utime(fs / "d", ns=(10, 20))
    os.utime(fs, ns=(30, 40))
    upper.copy_up(b"d/f", Entry("d/f", "file", mode=0o644))
    upper.link_up(b"d/f", b"d/g")
    upper.copy_up(b"top", Entry("top", "file"))
    upper.mark_opaque(b"d")
    st = os.lstat(fs / "d")
    assert (st.st_atime_ns, st.st_mtime_ns) == (10, 20)
    assert (os.lstat(fs).st_atime_ns, os.lstat(fs).st_mtime_ns) == (30, 40)
    assert os.lstat(fs / "d/g").st_ino == os.lstat(fs / "d/f").st_ino
    assert (fs / "d" / OPAQUE_MARKER).exists()


def test_set_root_gives_fs_its_metadata(tmp_path: Path) -> None:
    upper = upper_at(tmp_path)
    upper.set_root(Entry("", "dir", mode=0o750, mtime=12))
    st = os.lstat(fs_of(upper))
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o750, 12)


def test_whiteouts_removal_and_rename(tmp_path: Path) -> None:
    upper = upper_at(tmp_path)
    fs = fs_of(upper)
    (fs / "d").mkdir()
    (fs / "d/sub").mkdir()
    (fs / "d/sub/x").write_bytes(b"x")
    (fs / "f").write_bytes(b"f")
    upper.remove(b"d/sub", (b"d", b"sub"))
    assert os.listdir(fs / "d") == [".wh.sub"]
    upper.remove(b"f", None)
    assert not (fs / "f").exists()
    upper.remove(None, (b"", b"lower"))
    assert (fs / ".wh.lower").exists()
    upper.unwhiteout(b"", b"lower")
    assert not (fs / ".wh.lower").exists()
    upper.whiteout(b"d", b"y")
    assert (fs / "d/.wh.y").exists()
    # a rename over a whiteout replaces it, and leaves one for the old name if asked
    (fs / "a").write_bytes(b"a")
    upper.rename(b"a", b"d/y", False, (b"", b"a"))
    assert (fs / "d/y").read_bytes() == b"a"
    assert not (fs / "d/.wh.y").exists()
    assert (fs / ".wh.a").exists()
    # over an upper directory that holds only markers
    (fs / "m").mkdir()
    (fs / "m" / OPAQUE_MARKER).write_bytes(b"")
    (fs / "n").mkdir()
    upper.rename(b"n", b"m", True, None)
    assert os.listdir(fs / "m") == []
    assert not (fs / "n").exists()
    (fs / "q").mkdir()
    (fs / "q/x").write_bytes(b"")
    with pytest.raises(OSError) as caught:
        upper.rename(b"d", b"q", False, None)
    assert caught.value.errno == errno.ENOTEMPTY


def test_exchange_swaps_and_reports_its_errno(tmp_path: Path) -> None:
    upper = upper_at(tmp_path)
    fs = fs_of(upper)
    (fs / "a").write_bytes(b"A")
    (fs / "d").mkdir()
    (fs / "d/b").write_bytes(b"B")
    upper.exchange(b"a", b"d/b")
    assert ((fs / "a").read_bytes(), (fs / "d/b").read_bytes()) == (b"B", b"A")
    with pytest.raises(OSError) as caught:
        upper.exchange(b"a", b"missing")
    assert caught.value.errno == errno.ENOENT
    assert caught.value.filename == os.fsdecode(upper.path(b"a"))


def test_files_open_truncate_times_and_sync(tmp_path: Path) -> None:
    upper = upper_at(tmp_path)
    fs = fs_of(upper)
    (fs / "d").mkdir()
    (fs / "d/f").write_bytes(b"hello")
    os.symlink("f", fs / "d/s")
    fd = upper.open(b"d/f", os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"!")
        assert os.get_inheritable(fd) is False
    finally:
        os.close(fd)
    assert (fs / "d/f").read_bytes() == b"hello!"
    with pytest.raises(OSError) as caught:
        upper.open(b"d/s", os.O_RDONLY)
    assert caught.value.errno == errno.ELOOP
    upper.truncate(b"d/f", 2)
    assert (fs / "d/f").read_bytes() == b"he"
    assert upper.lstat(b"d/s").st_size == 1
    assert stat.S_ISLNK(upper.lstat(b"d/s").st_mode)
    os.utime(fs / "d/f", ns=(100, 200))
    upper.set_times(b"d/f", 5, None)
    assert (os.lstat(fs / "d/f").st_atime_ns, os.lstat(fs / "d/f").st_mtime_ns) == (5, 200)
    upper.set_times(b"d/f", None, 6)
    assert (os.lstat(fs / "d/f").st_atime_ns, os.lstat(fs / "d/f").st_mtime_ns) == (5, 6)
    upper.set_times(b"d/s", 1, 2)  # the link itself, not its target
    assert os.lstat(fs / "d/s").st_mtime_ns == 2
    assert os.lstat(fs / "d/f").st_mtime_ns == 6
    upper.fsync_dir(b"d")
    upper.fsync_dir(b"")
    with pytest.raises(NotADirectoryError):
        upper.fsync_dir(b"d/f")


def test_set_xattr_and_removing_a_missing_one(tmp_path: Path) -> None:
    upper = upper_at(tmp_path)
    fs = fs_of(upper)
    (fs / "f").write_bytes(b"")
    upper.set_xattr(b"f", b"user.a", b"1")
    assert os.getxattr(fs / "f", "user.a") == b"1"
    upper.set_xattr(b"f", b"user.a", None)
    assert os.listxattr(fs / "f") == []
    upper.set_xattr(b"f", b"user.a", None)  # already gone: nothing to do
    with pytest.raises(OSError) as caught:
        upper.set_xattr(b"f", b"bogus.a", b"1")
    assert caught.value.errno == errno.EOPNOTSUPP


@needs_root
def test_symlinks_are_changed_themselves_never_their_targets(tmp_path: Path) -> None:
    """Every call on a path of ``fs/`` acts on a symlink itself (trusted xattrs may sit on
    a symlink; user xattrs may not)."""
    upper = upper_at(tmp_path, privileged=True)
    fs = fs_of(upper)
    (fs / "d").mkdir()
    (fs / "d/inside").write_bytes(b"kept")
    os.symlink("d", fs / "s")
    os.setxattr(fs / "d", "trusted.target", b"t")
    # apply: the link's own xattrs, listed, removed and set on the link
    os.setxattr(fs / "s", "trusted.old", b"o", follow_symlinks=False)
    upper.apply_at(b"s", Entry("s", "symlink", mode=0o777, xattrs={"trusted.new": b"n"}))
    assert os.listxattr(fs / "s", follow_symlinks=False) == ["trusted.new"]
    assert os.listxattr(fs / "d") == ["trusted.target"]
    # one xattr set and removed
    upper.set_xattr(b"s", b"trusted.one", b"1")
    assert os.getxattr(fs / "s", "trusted.one", follow_symlinks=False) == b"1"
    upper.set_xattr(b"s", b"trusted.one", None)
    assert os.listxattr(fs / "s", follow_symlinks=False) == ["trusted.new"]
    assert os.listxattr(fs / "d") == ["trusted.target"]
    # times: what is not given stays the link's own
    os.utime(fs / "s", ns=(11, 12), follow_symlinks=False)
    os.utime(fs / "d", ns=(21, 22))
    upper.set_times(b"s", None, 3)
    assert (os.lstat(fs / "s").st_atime_ns, os.lstat(fs / "s").st_mtime_ns) == (11, 3)
    assert os.lstat(fs / "d").st_mtime_ns == 22
    # a hard link of a symlink is a symlink
    upper.link_up(b"s", b"s2")
    assert os.lstat(fs / "s2").st_ino == os.lstat(fs / "s").st_ino
    # removing the link leaves the directory it points to
    upper.remove(b"s", None)
    assert not os.path.lexists(fs / "s")
    assert (fs / "d/inside").read_bytes() == b"kept"


def test_removing_an_xattr_reports_errors_other_than_a_missing_one(tmp_path: Path) -> None:
    upper = upper_at(tmp_path)
    (fs_of(upper) / "f").write_bytes(b"")
    with pytest.raises(OSError) as caught:
        upper.set_xattr(b"f", b"bogus.a", None)
    assert caught.value.errno == errno.EOPNOTSUPP
