"""``fsnap-overlay``: an overlayfs-format layer stack mounted by fsnap's engine, checked
against kernel overlayfs (``mount -t overlay``) over the very same directories.

Read-only: the merged listing equals the kernel's, whether the lowers spell whiteouts and
opaque directories the kernel's way (0/0 character devices, ``trusted.overlay.opaque``) or
with ``.wh.`` files. Writable: one change set through each gives the same listing, the
upper directories hold the same whiteouts (0/0 character devices, never ``.wh.`` files),
and the kernel itself, stacking fsnap-overlay's upper on the lowers, sees the same tree.
Also the ``mount -t fuse.fsnap-overlay`` form (mount.fuse3), ``-f``, ignored options and
refusals. Every mount is undone in a ``finally``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from listing import differences, full_listing
from support.overlay import (
    FSNAP_OVERLAY,
    Style,
    apply_changes,
    fsnap_overlay,
    kernel_overlay,
    lowerdir,
    run_checked,
    unmount,
    write_stack,
)
from support.proc import fstype, is_mountpoint

from fsnap.archive.entry import Entry
from fsnap.archive.format import OVERLAY_OPAQUE_XATTR as OPAQUE_XATTR
from fsnap.archive.format import OverlayMarkers
from fsnap.diff.scan import scan_snapshot
from fsnap.mount.upper import Upper

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_fuse]

PRESENT = (
    "etc/passwd",
    "etc/keep",
    "opq/upper",
    "new/deep/file",
    "hl/b",
    "sym",
    "dev/null",
    "dev/fifo",
    "d2f",
    "data/e",
)
ABSENT = (
    "etc/gone",
    "opq/lower",
    "opq/sub",
    "data/drop",
    "d2f/child",
    "etc/.wh.gone",
    "opq/.wh..wh..opq",
    "data/.wh.drop",
)
# /usr/local/bin is on the PATH mount(8) gives its helpers (it drops the caller's PATH).
SYSTEM_BIN = Path("/usr/local/bin/fsnap-overlay")


def assert_same(want: list[str], got: list[str], labels: tuple[str, str]) -> None:
    assert got == want, f"{labels[1]} differs from {labels[0]}:\n" + differences(want, got, labels)


def check_view(view: Path) -> None:
    """Guards against two equally empty (or equally wrong) views comparing equal."""
    for rel in PRESENT:
        assert os.path.lexists(view / rel), f"{view} lacks {rel}"
    for rel in ABSENT:
        assert not os.path.lexists(view / rel), f"{view} shows {rel}"
    assert (view / "etc" / "passwd").read_bytes() == b"root:x:0:0\nuser:x:1000:1000\n"


@pytest.mark.parametrize("style", ["chardev", "wh"])
def test_read_only_lists_like_kernel_overlay(
    tmp_path: Path, stack_base: Path, style: Style
) -> None:
    kernel_lowers = write_stack(tmp_path / "kernel-format", "chardev")
    lowers = write_stack(stack_base / f"{style}-format", style)
    with kernel_overlay(kernel_lowers, tmp_path / "kernel") as kernel:
        check_view(kernel)
        want = full_listing(kernel)
    with fsnap_overlay(lowerdir(lowers), tmp_path / "fsnap") as mnt:
        check_view(mnt)
        got = full_listing(mnt)
        with pytest.raises(OSError) as refused:
            (mnt / "new-file").write_bytes(b"x")
        assert refused.value.errno == errno.EROFS
    assert_same(want, got, ("kernel overlayfs", f"fsnap-overlay ({style} lowers)"))


def whiteouts(upper: Path) -> set[str]:
    return {e.path for e in scan_snapshot(upper, overlay=True) if e.kind == "whiteout"}


def upper_names(upper: Path) -> list[str]:
    return [name for _, dirs, files in os.walk(upper) for name in dirs + files]


def writable(base: Path, lowers: list[Path]) -> str:
    for sub in ("upper", "work"):
        (base / sub).mkdir(parents=True)
    return f"{lowerdir(lowers)},upperdir={base / 'upper'},workdir={base / 'work'}"


def test_writable_changes_like_kernel_overlay(tmp_path: Path, stack_base: Path) -> None:
    """fsnap-overlay's stack on disk, then on tmpfs; the kernel's always on disk."""
    kernel_lowers = write_stack(tmp_path / "kernel-lowers", "chardev")
    lowers = write_stack(stack_base / "lowers", "chardev")
    writable(tmp_path / "k", kernel_lowers)
    fsnap_opts = writable(stack_base / "f", lowers)
    with kernel_overlay(
        kernel_lowers, tmp_path / "kernel", tmp_path / "k" / "upper", tmp_path / "k" / "work"
    ) as kernel:
        apply_changes(kernel)
        want = full_listing(kernel)
    with fsnap_overlay(fsnap_opts, tmp_path / "fsnap") as mnt:
        apply_changes(mnt)
        got = full_listing(mnt)
    assert "new.txt file mode=0644 uid=0 gid=0 size=10" in " ".join(got)
    assert not any(line.startswith("etc/keep ") for line in got)
    assert_same(want, got, ("kernel overlayfs", "fsnap-overlay"))

    upper = stack_base / "f" / "upper"
    assert whiteouts(upper) == whiteouts(tmp_path / "k" / "upper")
    assert {"etc/keep", "data/a", "tree", "dev/fifo", "new/deep"} <= whiteouts(upper)
    for rel in whiteouts(upper):
        st = os.lstat(upper / rel)
        assert stat.S_ISCHR(st.st_mode), rel
        assert st.st_rdev == 0, rel
    assert not [n for n in upper_names(upper) if n.startswith(".wh.")]
    assert os.getxattr(upper / "opq2", "trusted.overlay.opaque") == b"y"
    assert os.listdir(stack_base / "f" / "work" / "fsnap-overlay") == []

    # the kernel reads fsnap-overlay's upper as one more layer and sees the same tree
    with kernel_overlay([upper, *lowers], tmp_path / "kernel-reads-ours") as view:
        assert_same(want, full_listing(view), ("kernel overlayfs", "kernel over our upper"))
    # and fsnap-overlay mounted again over its upper shows its changes again
    with fsnap_overlay(fsnap_opts, tmp_path / "again") as again:
        assert_same(want, full_listing(again), ("kernel overlayfs", "fsnap-overlay remounted"))


@contextlib.contextmanager
def on_system_path() -> Iterator[None]:
    """``fsnap-overlay`` where mount(8)'s helpers look: a link to this venv's script for the
    test's duration. A link to another checkout's (scripts/setup makes one) is pointed here
    and restored after; a real program there is not ours to replace."""
    previous = os.readlink(SYSTEM_BIN) if os.path.islink(SYSTEM_BIN) else None
    if os.path.lexists(SYSTEM_BIN) and previous is None:
        pytest.fail(f"{SYSTEM_BIN} exists and is not a link to an fsnap-overlay")
    if previous is None or os.path.realpath(SYSTEM_BIN) != os.path.realpath(FSNAP_OVERLAY):
        _link(SYSTEM_BIN, str(FSNAP_OVERLAY))
    try:
        yield
    finally:
        if previous is None:
            SYSTEM_BIN.unlink()
        elif os.readlink(SYSTEM_BIN) != previous:
            _link(SYSTEM_BIN, previous)


def _link(path: Path, target: str) -> None:
    """Replace ``path`` by a link to ``target`` atomically."""
    staged = path.with_name(path.name + ".fsnap-test")
    with contextlib.suppress(FileNotFoundError):
        staged.unlink()
    staged.symlink_to(target)
    os.replace(staged, path)


@contextlib.contextmanager
def through_mount8(options: str, mnt: Path) -> Iterator[Path]:
    """``mount -t fuse.fsnap-overlay fsnap-overlay MNT -o OPTIONS``; unmounted after."""
    mnt.mkdir()
    with on_system_path():
        try:
            run_checked(
                ["mount", "-t", "fuse.fsnap-overlay", "fsnap-overlay", str(mnt), "-o", options]
            )
            assert fstype(mnt) == "fuse.fsnap-overlay"
            yield mnt
        finally:
            unmount(mnt)


def test_mount_t_fuse_fsnap_overlay(tmp_path: Path) -> None:
    lowers = write_stack(tmp_path / "lowers", "wh")
    options = writable(tmp_path / "o", lowers)
    with through_mount8(options, tmp_path / "mnt") as mnt:
        check_view(mnt)
        (mnt / "etc" / "added").write_bytes(b"through mount(8)\n")
        os.unlink(mnt / "etc" / "keep")
        run_checked(["umount", str(mnt)])
    upper = tmp_path / "o" / "upper"
    assert (upper / "etc" / "added").read_bytes() == b"through mount(8)\n"
    assert whiteouts(upper) == {"etc/keep"}


LAYERS = 128  # containerd's deepest chain (its conformance suite mounts 128 layers)


def many_layers(base: Path) -> list[Path]:
    """``LAYERS`` layer directories, top first: each adds ``only-NNN`` and rewrites
    ``shared``, so the view shows every layer and the top one wins."""
    lowers = []
    for n in range(LAYERS):
        layer = base / f"{n:03d}"
        layer.mkdir(parents=True)
        (layer / f"only-{n:03d}").write_text(f"{n}\n")
        (layer / "shared").write_text(f"{n}\n")
        lowers.append(layer)
    return lowers[::-1]


def check_many(view: Path) -> None:
    assert sorted(os.listdir(view)) == sorted([f"only-{n:03d}" for n in range(LAYERS)] + ["shared"])
    assert (view / "shared").read_text() == f"{LAYERS - 1}\n"
    assert (view / "only-000").read_text() == "0\n"


def test_128_layers_through_mount8(tmp_path: Path) -> None:
    """128 layers through mount(8): kernel overlayfs (``kernel_overlay_command``: what
    util-linux 2.41's 256-byte fsconfig(2) limit and mount(2)'s one page leave room for)
    and ``mount -t fuse.fsnap-overlay`` given the 128 absolute paths as they are (over 8 KB
    of options, which mount(8) hands to the helper's command line)."""
    lowers = many_layers(tmp_path / "layers-named-as-long-as-a-containerd-snapshot-directory")
    absolute = lowerdir(lowers)
    assert len(absolute) > 4096  # neither fsconfig(2) nor one page of mount(2) takes it
    with kernel_overlay(lowers, tmp_path / "kernel") as kernel:
        check_many(kernel)
        want = full_listing(kernel)
    with through_mount8(absolute, tmp_path / "fsnap") as mnt:
        check_many(mnt)
        got = full_listing(mnt)
    assert_same(want, got, ("kernel overlayfs", "fsnap-overlay through mount(8)"))


def test_foreground_and_ignored_options(tmp_path: Path) -> None:
    """``-f`` serves until unmounted, then exits 0; options of overlayfs and fuse-overlayfs
    that fsnap has no use for do not stop the mount."""
    lowers = write_stack(tmp_path / "lowers", "chardev")
    options = (
        writable(tmp_path / "o", lowers)
        + ",index=off,xino=off,redirect_dir=off,squash_to_root,noatime,nodev"
    )
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    process = subprocess.Popen(
        [str(FSNAP_OVERLAY), "-f", "-o", options, str(mnt)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        while not is_mountpoint(mnt):
            assert process.poll() is None, process.communicate()
        assert (mnt / "etc" / "passwd").read_bytes().startswith(b"root")
        with open("/proc/self/mounts") as mounts:
            line = next(m for m in mounts if m.split()[1] == str(mnt))
        assert "noatime" in line
        assert "nodev" in line
        run_checked(["fusermount3", "-u", str(mnt)])
        assert process.wait(timeout=30) == 0
    finally:
        unmount(mnt)
        if process.poll() is None:
            process.kill()
        process.communicate()


@pytest.mark.parametrize(
    ("options", "code", "message"),
    [
        ("upperdir=/tmp", 4, "lowerdir"),
        ("lowerdir=/nonexistent/fsnap-overlay-lower", 2, "not a directory"),
        ("lowerdir=/tmp,upperdir=/tmp", 4, "workdir"),
    ],
)
def test_refusals_without_traceback(tmp_path: Path, options: str, code: int, message: str) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        done = subprocess.run(
            [str(FSNAP_OVERLAY), "-o", options, str(mnt)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == code, done.stderr
        assert message in done.stderr
        assert "Traceback" not in done.stderr
        assert not is_mountpoint(mnt)
    finally:
        unmount(mnt)


@pytest.mark.parametrize("privileged", [True, False])
def test_upper_in_overlay_format(tmp_path: Path, privileged: bool) -> None:
    """The upper directory's markers, with and without the right to mknod and to set
    ``trusted.`` xattrs: what each writes, that metadata updates keep the opaque xattr,
    that a whiteout of either form goes away when the name is used again, and that
    ``scan_snapshot`` reads it all back."""
    fs, work = tmp_path / "upper", tmp_path / "work"
    fs.mkdir()
    upper = Upper(fs, work, privileged=True, markers=OverlayMarkers(privileged))
    upper.clear_work()
    upper.whiteout(b"", b"gone")
    upper.place(b"dir", Entry("dir", "dir", mode=0o755), opaque=True)
    upper.apply(upper.path(b"dir"), Entry("dir", "dir", mode=0o700), times=False)
    upper.mark_opaque(b"")
    entries = {e.path: e for e in scan_snapshot(fs, overlay=True)}
    assert entries["gone"].kind == "whiteout"
    assert entries["dir"].opaque
    assert entries["dir"].mode == 0o700
    assert entries["dir"].xattrs == {}
    if privileged:
        st = os.lstat(fs / "gone")
        assert stat.S_ISCHR(st.st_mode)
        assert st.st_rdev == 0
        assert os.getxattr(fs / "dir", OPAQUE_XATTR) == b"y"
        assert os.getxattr(fs, OPAQUE_XATTR) == b"y"
        assert not [n for n in upper_names(fs) if n.startswith(".wh.")]
    else:
        assert (fs / ".wh.gone").is_file()
        assert not os.path.lexists(fs / "gone")
        assert (fs / "dir" / ".wh..wh..opq").is_file()
        assert (fs / ".wh..wh..opq").is_file()
        assert OPAQUE_XATTR.decode() not in os.listxattr(fs / "dir")
    upper.unwhiteout(b"", b"gone")
    upper.place(b"gone", Entry("gone", "file", mode=0o600))
    assert (fs / "gone").is_file()
    assert not os.path.lexists(fs / ".wh.gone")
    assert "gone" not in {e.path for e in scan_snapshot(fs, overlay=True) if e.kind == "whiteout"}
