"""Hostile layer tars: every breakout case of containerd's archive tests, contained.

Each case builds its tar, applies it into ``sandbox/tmp/root`` (after the case's lower layer,
if it has one, was applied into the same root, as containerd applies onto the lower
contents) and proves two things: nothing outside the root changed (a before/after snapshot
of the whole sandbox with sentinels where ``..`` and symlinks aim, plus the host paths that
absolute names aim at), and the entries landed where containerd puts them, or the layer was
rejected as an invalid archive where containerd rejects it. Same-file checks resolve paths
with the kernel inside a real ``chroot`` of the root.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.tar import TarBuilder, snapshot_paths, snapshot_tree, stat_in_chroot

from fsnap.archive.apply import apply_layer
from fsnap.archive.entry import Entry
from fsnap.errors import InvalidArgument

# No mount, no registry: these tests take seconds, so a minute means a hang.
pytestmark = pytest.mark.timeout(60)

HOST_TARGETS = [
    "/etc/passwd",
    "/etc/unbroken",
    "/etc/emptied",
    "/etc/localpasswd",
    "/etc/whitedout",
    "/breakout",
    "/localetc",
    "/localpasswd",
    "/dne",
]


@dataclass
class Outcome:
    root: Path
    lower: list[Entry]
    entries: list[Entry]


Check = Callable[[Outcome], None]


@dataclass
class Case:
    name: str
    tar: Callable[[Path], TarBuilder]  # gets the sandbox, for cases naming host paths
    check: Check | None = None  # None: the layer must be rejected as an invalid archive
    lower: Callable[[], TarBuilder] | None = None


def unbroken(o: Outcome) -> None:
    assert (o.root / "etc/unbroken").read_bytes() == b"unbroken"
    assert not (o.root / "etc/unbroken").is_symlink()
    assert any(e.path == "etc/unbroken" and e.kind == "file" for e in o.entries)


def same_file(a: str, b: str) -> Check:
    def check(o: Outcome) -> None:
        assert stat_in_chroot(o.root, a) == stat_in_chroot(o.root, b)

    return check


def not_same_file(a: str, b: str) -> Check:
    def check(o: Outcome) -> None:
        assert stat_in_chroot(o.root, a) != stat_in_chroot(o.root, b)

    return check


def same_symlink(a: str, b: str) -> Check:
    def check(o: Outcome) -> None:
        assert (o.root / a).is_symlink()
        assert (o.root / b).is_symlink()
        assert os.readlink(o.root / a) == os.readlink(o.root / b)

    return check


def content(path: str, data: bytes) -> Check:
    def check(o: Outcome) -> None:
        assert (o.root / path).read_bytes() == data

    return check


def merged(o: Outcome) -> set[str]:
    """Paths visible when this layer's index lies over the lower one's."""
    visible = {e.path for e in o.lower if e.kind != "whiteout"}
    for e in o.entries:
        if e.kind == "whiteout":
            visible = {p for p in visible if p != e.path and not p.startswith(e.path + "/")}
        elif e.kind == "dir" and e.opaque:
            visible = {p for p in visible if not p.startswith(e.path + "/")}
    return visible | {e.path for e in o.entries if e.kind != "whiteout"}


def visible(path: str, shown: bool) -> Check:
    def check(o: Outcome) -> None:
        assert (path in merged(o)) is shown

    return check


def every(*checks: Check) -> Check:
    def check(o: Outcome) -> None:
        for c in checks:
            c(o)

    return check


def t() -> TarBuilder:
    return TarBuilder()


def etc_passwd() -> TarBuilder:
    return t().dir("etc", 0o770).file("/etc/passwd", b"inside")


def users_etc(*, symlink: str | None = None, whitedout: bool = False) -> TarBuilder:
    b = t().dir("/etc/", 0o755).file("/etc/passwd", b"all users")
    if whitedout:
        b.file("/etc/whitedout", b"ahhhh whiteout")
    if symlink is not None:
        b.symlink("localetc", symlink)
    return b


CASES = [
    Case(
        "SymlinkAbsolute",
        lambda s: (
            t().dir("etc").symlink("localetc", "/etc").file("/localetc/unbroken", b"unbroken")
        ),
        unbroken,
    ),
    Case(
        "SymlinkUpAndOut",
        lambda s: (
            t()
            .dir("etc")
            .dir("dummy")
            .symlink("localetc", "/dummy/../etc")
            .file("/localetc/unbroken", b"unbroken")
        ),
        unbroken,
    ),
    Case(
        "SymlinkMultipleAbsolute",
        lambda s: (
            t()
            .dir("etc")
            .dir("dummy")
            .symlink("/dummy/etc", "/etc")
            .symlink("localetc", "/dummy/etc")
            .file("/dummy/etc/unbroken", b"unbroken")
        ),
        unbroken,
    ),
    Case(
        "SymlinkMultipleRelative",
        lambda s: (
            t()
            .dir("etc")
            .dir("dummy")
            .symlink("/dummy/etc", "/etc")
            .symlink("localetc", "./dummy/etc")
            .file("/dummy/etc/unbroken", b"unbroken")
        ),
        unbroken,
    ),
    Case(
        "SymlinkEmptyFile",
        lambda s: (
            t()
            .dir("etc")
            .file("etc/emptied", b"notempty")
            .symlink("localetc", "/etc")
            .file("/localetc/emptied", b"")
        ),
        content("etc/emptied", b""),
    ),
    Case(
        "SymlinkParentDirectory",
        lambda s: etc_passwd().symlink("..", "/etc/").hardlink("localpasswd", "/etc/passwd"),
        every(same_file("/localpasswd", "/etc/passwd"), content("etc/passwd", b"inside")),
    ),
    Case(
        "SymlinkEmptyFilename",
        lambda s: etc_passwd().symlink("", "/etc/").hardlink("localpasswd", "/etc/passwd"),
        same_file("/localpasswd", "/etc/passwd"),
    ),
    Case(
        "SymlinkParentRelative",
        lambda s: (
            etc_passwd()
            .symlink("localetc/sub/..", "/etc/")
            .hardlink("/localetc/localpasswd", "/etc/passwd")
        ),
        every(
            same_file("/localetc/localpasswd", "/etc/passwd"),
            lambda o: None if os.readlink(o.root / "localetc") == "/etc/" else pytest.fail("link"),
        ),
    ),
    Case(
        "SymlinkSlashEnded",
        lambda s: (
            etc_passwd().dir("localetc/", 0o770).hardlink("/localetc/localpasswd", "/etc/passwd")
        ),
        same_file("/localetc/localpasswd", "/etc/passwd"),
    ),
    Case(
        "SymlinkOverrideDirectory",
        lambda s: t().symlink("localetc", "/etc").hardlink("/localetc/localpasswd", "/etc/passwd"),
        every(same_file("/localetc/localpasswd", "/etc/passwd"), content("etc/passwd", b"inside")),
        lower=lambda: etc_passwd().dir("/localetc/"),
    ),
    Case(
        "SymlinkOverrideDirectoryRelative",
        lambda s: (
            t().symlink("localetc", "../../etc").hardlink("/localetc/localpasswd", "/etc/passwd")
        ),
        same_file("/localetc/localpasswd", "/etc/passwd"),
        lower=lambda: etc_passwd().dir("/localetc/"),
    ),
    Case(
        "HardlinkRelative",
        lambda s: (
            etc_passwd()
            .dir("breakouts")
            .symlink("breakouts/d1", "../../etc")
            .hardlink("breakouts/mypasswd", "/breakouts/d1/passwd")
        ),
        same_file("/breakouts/mypasswd", "/etc/passwd"),
    ),
    Case(
        "HardlinkDownAndOut",
        lambda s: (
            etc_passwd()
            .dir("breakouts")
            .dir("downandout")
            .symlink("breakouts/d1", "../downandout/../../etc")
            .hardlink("breakouts/mypasswd", "/breakouts/d1/passwd")
        ),
        same_file("/breakouts/mypasswd", "/etc/passwd"),
    ),
    Case(
        "HardlinkAbsolute",
        lambda s: (
            etc_passwd().symlink("localetc", "/etc").hardlink("localpasswd", "/localetc/passwd")
        ),
        same_file("localpasswd", "/etc/passwd"),
    ),
    Case(
        "HardlinkRelativeLong",
        lambda s: (
            etc_passwd()
            .symlink("localetc", "../../../../../../../etc")
            .hardlink("localpasswd", "/localetc/passwd")
        ),
        same_file("localpasswd", "/etc/passwd"),
    ),
    Case(
        "HardlinkRelativeUpAndOut",
        lambda s: (
            etc_passwd()
            .symlink("localetc", "upandout/../../../etc")
            .hardlink("localpasswd", "/localetc/passwd")
        ),
        same_file("localpasswd", "/etc/passwd"),
    ),
    Case(
        "HardlinkDirectRelative",
        lambda s: etc_passwd().hardlink("localpasswd", "../../../../../etc/passwd"),
        same_file("localpasswd", "/etc/passwd"),
    ),
    Case(
        "HardlinkDirectAbsolute",
        lambda s: etc_passwd().hardlink("localpasswd", "/etc/passwd"),
        same_file("localpasswd", "/etc/passwd"),
    ),
    Case(
        "HardlinkSymlinkRelative",
        lambda s: (
            etc_passwd()
            .symlink("passwdlink", "../../../../../etc/passwd")
            .hardlink("localpasswd", "/passwdlink")
        ),
        every(same_symlink("localpasswd", "passwdlink"), same_file("/localpasswd", "/etc/passwd")),
    ),
    Case(
        "HardlinkSymlinkAbsolute",
        lambda s: (
            etc_passwd().symlink("passwdlink", "/etc/passwd").hardlink("localpasswd", "/passwdlink")
        ),
        every(same_symlink("localpasswd", "passwdlink"), same_file("/localpasswd", "/etc/passwd")),
    ),
    Case(
        "HardlinkSymlinkBeforeCreateTarget",
        lambda s: (
            t()
            .dir("etc", 0o770)
            .symlink("localpasswd", "/etc/passwd")
            .hardlink("localpasswd-dup", "localpasswd")
            .file("/etc/passwd", b"after")
        ),
        every(same_file("localpasswd-dup", "/etc/passwd"), content("etc/passwd", b"after")),
    ),
    Case(
        "HardlinkSymlinkChmod",
        lambda s: (
            t()
            .symlink(str(s / "also-exists-outside-root"), str(s / "perm400"))
            .hardlink("sketchylink", str(s / "also-exists-outside-root"), mode=0o777)
        ),
        lambda o: None,  # the sandbox snapshot proves perm400 kept its 0400
    ),
    Case(
        "DirectoryOverrideSymlink",
        lambda s: t().dir("/localetc/").hardlink("/localetc/localpasswd", "/etc/passwd"),
        every(
            same_file("/localetc/localpasswd", "/etc/passwd"),
            lambda o: None if (o.root / "localetc").is_dir() else pytest.fail("not a dir"),
        ),
        lower=lambda: etc_passwd().symlink("localetc", "/etc"),
    ),
    Case(
        "DirectoryOverrideSymlinkAndHardlink",
        lambda s: t().dir("/localetc/").file("/localetc/localpasswd", b"different"),
        every(
            not_same_file("/localetc/localpasswd", "/etc/passwd"),
            content("etc/passwd", b"inside"),
            content("localetc/localpasswd", b"different"),
        ),
        lower=lambda: (
            etc_passwd().symlink("localetc", "etc").hardlink("/localetc/localpasswd", "/etc/passwd")
        ),
    ),
    Case("WhiteoutRootParent", lambda s: t().file(".wh...", b""), None, lower=etc_passwd),
    Case("WhiteoutParent", lambda s: t().file("etc/.wh...", b""), None, lower=etc_passwd),
    Case("WhiteoutRoot", lambda s: t().file(".wh..", b""), None, lower=etc_passwd),
    Case("WhiteoutCurrentDirectory", lambda s: t().file("etc/.wh..", b""), None, lower=etc_passwd),
    Case("WhiteoutEmptyName", lambda s: t().file("etc/.wh.", b""), None, lower=etc_passwd),
    Case(
        "WhiteoutSymlink",
        lambda s: t().file(".wh.localetc", b""),
        every(
            visible("etc/passwd", True),
            visible("localetc", False),
            content("etc/passwd", b"all users"),
        ),
        lower=lambda: users_etc(symlink="/etc"),
    ),
    Case(
        "WhiteoutSymlinkPath",
        lambda s: t().file("localetc/.wh.whitedout", b""),
        every(
            visible("etc/passwd", True),
            visible("etc/whitedout", False),
            lambda o: None if (o.root / "etc/.wh.whitedout").is_file() else pytest.fail("marker"),
        ),
        lower=lambda: users_etc(symlink="/etc", whitedout=True),
    ),
    Case(
        "WhiteoutDirectoryName",
        lambda s: t().file(".wh.etc/somefile", b"non-empty"),
        every(
            visible("etc/passwd", True),
            content(".wh.etc/somefile", b"non-empty"),
            content("etc/passwd", b"all users"),
        ),
        lower=lambda: users_etc(symlink="/etc", whitedout=True),
    ),
    Case(
        "WhiteoutDeadSymlinkParent",
        lambda s: t().file("localetc/.wh.etc", b""),
        every(visible("etc/passwd", True), visible("etc", True)),
        lower=lambda: users_etc(symlink="/dne"),
    ),
    Case(
        "WhiteoutRelativePath",
        lambda s: t().file("dne/../.wh.etc", b""),
        every(visible("etc/passwd", False), visible("etc", False)),
        lower=lambda: users_etc(symlink="/dne"),
    ),
]


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    """Sentinels where hostile names aim: ``..`` of the root, of its parent, and beyond."""
    box = tmp_path / "sandbox"
    for d in ("etc", "tmp/etc", "tmp/root"):
        (box / d).mkdir(parents=True)
    (box / "etc/passwd").write_bytes(b"outside")
    (box / "tmp/etc/passwd").write_bytes(b"outside, one level up")
    (box / "tmp/sentinel").write_bytes(b"sentinel")
    (box / "perm400").write_bytes(b"...")
    (box / "perm400").chmod(0o400)
    (box / "also-exists-outside-root").write_bytes(b"...")
    (box / "also-exists-outside-root").chmod(0o640)
    return box


@pytest.mark.parametrize("privileged", [True, False], ids=["root", "unprivileged-mode"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_breakout_is_contained(sandbox: Path, case: Case, privileged: bool) -> None:
    root = sandbox / "tmp/root"
    lower: list[Entry] = []
    if case.lower is not None:
        lower = apply_layer(io.BytesIO(case.lower().data()), root, sync=False).entries
    before = snapshot_tree(sandbox, exclude=root)
    host_before = snapshot_paths(HOST_TARGETS)
    data = case.tar(sandbox).data()

    if case.check is None:
        with pytest.raises(InvalidArgument, match="invalid archive"):
            apply_layer(io.BytesIO(data), root, privileged=privileged, sync=False)
    else:
        result = apply_layer(io.BytesIO(data), root, privileged=privileged, sync=False)
        case.check(Outcome(root, lower, result.entries))

    assert snapshot_tree(sandbox, exclude=root) == before
    assert snapshot_paths(HOST_TARGETS) == host_before
