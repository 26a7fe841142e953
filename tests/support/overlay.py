"""Helpers for the ``fsnap-overlay`` tests: layer stacks written by hand in overlayfs's
format, and mounts (kernel overlayfs, fsnap-overlay, fsnap-overlay through mount(8)) that
are always undone, also when a test fails.

``write_stack(base, style)`` writes the same three lower layers in one of two spellings:
``"chardev"`` (what kernel overlayfs reads: whiteouts as 0/0 character devices, opaque
directories by ``trusted.overlay.opaque``) or ``"wh"`` (``.wh.NAME`` files and
``.wh..wh..opq`` markers, which the kernel does not understand).
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from support.cli import succeeded
from support.proc import fstype, is_mountpoint

Style = Literal["chardev", "wh"]
FSNAP_OVERLAY = Path(sys.executable).with_name("fsnap-overlay")
MTIME = 1_650_000_000_123_456_789
CHANGES = Path(__file__).parents[1] / "overlay_changes.py"


class StackWriter:
    """Writes one layer directory; every non-directory gets the fixed mtime."""

    def __init__(self, root: Path, style: Style) -> None:
        self.root = root
        self.style = style
        root.mkdir(parents=True)

    def _stamp(self, path: Path) -> None:
        os.utime(path, ns=(MTIME, MTIME), follow_symlinks=False)

    def dir(self, rel: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> StackWriter:
        path = self.root / rel
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, uid, gid)
        os.chmod(path, mode)
        return self

    def file(
        self,
        rel: str,
        data: bytes,
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        xattrs: dict[str, bytes] | None = None,
    ) -> StackWriter:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.chown(path, uid, gid)
        os.chmod(path, mode)
        for key, value in (xattrs or {}).items():
            os.setxattr(path, key, value)
        self._stamp(path)
        return self

    def link(self, rel: str, target: str) -> StackWriter:
        os.link(self.root / target, self.root / rel)
        return self

    def symlink(self, rel: str, target: str) -> StackWriter:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, path)
        self._stamp(path)
        return self

    def node(self, rel: str, mode: int, dev: tuple[int, int] = (0, 0)) -> StackWriter:
        path = self.root / rel
        os.mknod(path, mode, os.makedev(*dev))
        self._stamp(path)
        return self

    def whiteout(self, rel: str) -> StackWriter:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.style == "chardev":
            os.mknod(path, stat.S_IFCHR, os.makedev(0, 0))
        else:
            (path.parent / (".wh." + path.name)).touch()
        return self

    def opaque(self, rel: str) -> StackWriter:
        path = self.root / rel
        path.mkdir(parents=True, exist_ok=True)
        if self.style == "chardev":
            os.setxattr(path, "trusted.overlay.opaque", b"y")
        else:
            (path / ".wh..wh..opq").touch()
        return self


def write_stack(base: Path, style: Style) -> list[Path]:
    """Three lower layers; returned top first, as ``lowerdir=`` lists them."""
    bottom = StackWriter(base / "bottom", style)
    bottom.dir("etc").file("etc/passwd", b"root:x:0:0\n").file("etc/keep", b"keep\n")
    bottom.file("etc/gone", b"whited out\n")
    bottom.dir("data").file("data/a", b"a\n").file("data/b", b"b\n", mode=0o640)
    bottom.file("data/c", b"c\n").file("data/d", b"d\n").file("data/drop", b"drop\n")
    bottom.file("data/e", b"e\n", xattrs={"user.color": b"red"})
    bottom.file("data/f", b"f" * 5000).file("data/suid", b"s", mode=0o4755)
    bottom.dir("opq").file("opq/lower", b"hidden\n").dir("opq/sub").file("opq/sub/x", b"x")
    bottom.dir("opq2").file("opq2/old", b"old\n").dir("opq2/sub").file("opq2/sub/y", b"y")
    bottom.dir("tree").file("tree/t1", b"t1\n").dir("tree/sub").file("tree/sub/t2", b"t2")
    bottom.dir("home", mode=0o750, uid=1000, gid=1000)
    bottom.file("home/mine", b"mine\n", mode=0o600, uid=1000, gid=1000)
    bottom.dir("hl").file("hl/a", b"linked\n").link("hl/b", "hl/a")
    bottom.symlink("sym", "etc/passwd").dir("dev").node("dev/null", stat.S_IFCHR | 0o666, (1, 3))
    bottom.node("dev/fifo", stat.S_IFIFO | 0o600)
    bottom.dir("d2f").file("d2f/child", b"goes with its dir")
    middle = StackWriter(base / "middle", style)
    middle.dir("etc").file("etc/passwd", b"root:x:0:0\nuser:x:1000:1000\n")
    middle.whiteout("etc/gone").opaque("opq").file("opq/upper", b"kept\n")
    middle.dir("new").dir("new/deep").file("new/deep/file", b"deep\n")
    top = StackWriter(base / "top", style)
    top.dir("data").whiteout("data/drop").file("d2f", b"now a file\n")
    top.dir("etc", mode=0o750)
    return [top.root, middle.root, bottom.root]


def lowerdir(dirs: list[Path]) -> str:
    return "lowerdir=" + ":".join(str(d) for d in dirs)


def relative_to_common(dirs: list[str]) -> tuple[str, list[str]]:
    """The deepest directory above every one of ``dirs``, and each of them relative to it."""
    parent = os.path.commonpath(dirs)
    if parent in dirs:
        parent = os.path.dirname(parent)
    return parent, [os.path.relpath(d, parent) for d in dirs]


def kernel_overlay_command(
    lowers: list[str],
    mnt: str,
    upper: str | None = None,
    work: str | None = None,
    options: str = "",
) -> tuple[list[str], str, dict[str, str]]:
    """``(argv, cwd, env)`` of a ``mount -t overlay`` that takes any number of layers
    (``lowers`` top first; containerd's limit is 128) with util-linux 2.38 and 2.41 alike.

    util-linux 2.41's mount(8) hands options to the kernel through fsconfig(2), which
    rejects one value of 256 bytes or more ("wrong fs type, bad option"): three absolute
    pytest paths already pass that. ``LIBMOUNT_FORCE_MOUNT2=always`` makes it use mount(2)
    like 2.38 (which ignores the variable), whose options may fill one page (4095 bytes);
    128 absolute layer paths would not fit that either, so every directory is given
    relative to the common parent the command runs in (what containerd does): 128 layers
    named ``000``..``127`` take 511 bytes.
    """
    dirs = [*lowers, *(d for d in (upper, work) if d is not None)]
    cwd, names = relative_to_common(dirs)
    spelled = ["lowerdir=" + ":".join(names[: len(lowers)])]
    if upper is not None and work is not None:
        spelled += [f"upperdir={names[-2]}", f"workdir={names[-1]}"]
    if options:
        spelled.insert(0, options)
    argv = ["mount", "-t", "overlay", "overlay", "-o", ",".join(spelled), mnt]
    return argv, cwd, {"LIBMOUNT_FORCE_MOUNT2": "always"}


def unmount(mnt: Path) -> None:
    """Unmount ``mnt`` if mounted: normally, then lazily if it is busy."""
    if not is_mountpoint(mnt):
        return
    done = subprocess.run(["umount", str(mnt)], capture_output=True, check=False)
    if done.returncode != 0 and is_mountpoint(mnt):
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


def run_checked(argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> str:
    """Run ``argv`` (60 s at most); its stdout, which ``succeeded`` demands."""
    return succeeded(
        subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, cwd=cwd)
    )


@contextlib.contextmanager
def kernel_overlay(
    lowers: list[Path], mnt: Path, upper: Path | None = None, work: Path | None = None
) -> Iterator[Path]:
    """Kernel overlayfs through mount(8) (``kernel_overlay_command``); unmounted after."""
    mnt.mkdir(parents=True, exist_ok=True)
    argv, cwd, env = kernel_overlay_command(
        [str(d) for d in lowers],
        str(mnt),
        None if upper is None else str(upper),
        None if work is None else str(work),
    )
    try:
        run_checked(argv, {**os.environ, **env}, cwd)
        yield mnt
    finally:
        unmount(mnt)


@contextlib.contextmanager
def fsnap_overlay(options: str, mnt: Path, *extra: str) -> Iterator[Path]:
    """``fsnap-overlay -o OPTIONS MNT`` (daemonised); unmounted after, which ends it."""
    mnt.mkdir(parents=True, exist_ok=True)
    try:
        run_checked([str(FSNAP_OVERLAY), *extra, "-o", options, str(mnt)])
        assert fstype(mnt) == "fuse.fsnap-overlay"
        yield mnt
    finally:
        unmount(mnt)


def apply_changes(mnt: Path) -> None:
    """Run the change set (``overlay_changes.py``) against ``mnt`` from another process."""
    run_checked([sys.executable, "-I", str(CHANGES), str(mnt)])
