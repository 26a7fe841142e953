"""containerd as the oracle: fsnap's mount of an image lists exactly like containerd's view.

The same image goes to a real registry; Debian's containerd pulls it (``ctr images pull``,
overlayfs snapshotter) and mounts its merged view (``ctr images mount``: kernel overlayfs
over the snapshot directories); fsnap pulls it and mounts it over FUSE. Both trees are
listed line by line (``listing.full_listing``) and must be equal. The image covers issue 4's
cases, in OCI and Docker media types, with gzip, zstd and uncompressed layers.

Skipped only when containerd cannot run on this machine (with the reason from its log), and
never under CI (``$CI`` set), where ``scripts/setup`` has installed it.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from image_builder import (
    Blob,
    Compression,
    Format,
    Image,
    Layer,
    compress,
    layer_media_type,
    make_image,
)
from listing import differences, full_listing
from support import needs
from support.cli import fsnap, succeeded
from support.containerd import ContainerdUnavailable, Ctr, run_containerd
from support.image_mount import image_mounted, image_mounted_rw, pulled
from support.registry import RegistryProcess
from support.tar import TarBuilder, binary_str
from test_layer_semantics import layer_tars

from fsnap.oci import Platform

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_fuse, pytest.mark.needs_containerd]

CAP = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_raw, v2
NOBODY = 65534
LONG_NAME = "n" * 255
DEEP_DIR = "long/" + "/".join(f"{i}{'d' * 60}" for i in range(5))
NON_UTF8_DIR = binary_str(b"bytes/d\xff\xfe")
NON_UTF8_FILE = binary_str(b"bytes/caf\xe9")


@pytest.fixture(scope="session")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ctr]:
    """A private containerd (its own root, state and socket); stopped after the session."""
    try:
        with run_containerd(tmp_path_factory.mktemp("containerd")) as ctr:
            yield ctr
    except ContainerdUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"containerd must run under CI (scripts/setup installs it): {exc}")
        needs.unavailable(f"containerd cannot run here: {exc}")


def base_layer() -> bytes:
    """Everything the upper layers replace, hide or inherit from."""
    t = TarBuilder()
    t.dir("etc").file("etc/passwd", b"root:x:0:0\n").file("etc/gone", b"whited out")
    t.file("etc/keep", b"old keep")
    t.dir("opq").file("opq/lower", b"hidden").dir("opq/sub").file("opq/sub/x", b"x")
    t.dir("opq2").file("opq2/lower", b"hidden too")
    t.file("f2d", b"file becomes dir").dir("d2f").file("d2f/child", b"goes with its dir")
    t.file("f2l", b"file becomes symlink").symlink("l2d", "etc")
    t.dir("d2l").file("d2l/x", b"goes with its dir")
    t.dir("attrdir", mode=0o700, uid=5, gid=5).file("attrdir/in", b"in")
    t.dir("implicit", mode=0o710, uid=3, gid=4, xattrs={"user.implicit": b"lower"})
    t.symlink("l2f", "etc/passwd").file("empty", b"")
    t.dir("locked", mode=0o000).file("locked/in", b"behind mode 000", mode=0o000)
    t.file("binxattr", b"b", xattrs={"user.bin": b"\xff\x00\x80binary"})
    t.dir("hl").file("hl/a", b"linked", mode=0o600, uid=9)
    t.hardlink("hl/b", "hl/a", mode=0o600, uid=9).hardlink("hl/c", "hl/a", mode=0o600, uid=9)
    t.dir("dev").char("dev/null", 1, 3).block("dev/loop0", 7, 0, gid=6)
    t.fifo("dev/fifo", mode=0o600).char("dev/tty", 5, 0, mode=0o620, gid=5)
    t.dir("bin").file("bin/su", b"su", mode=0o4755).file("bin/wall", b"wall", mode=0o2755, gid=5)
    t.file("bin/ping", b"ping", mode=0o755, xattrs={"security.capability": CAP, "user.note": b"v"})
    t.dir("tmp", mode=0o1777).dir("shared", mode=0o3775, gid=100)
    t.file("secret", b"root only", mode=0o000)
    t.dir("home").dir("home/u", mode=0o750, uid=1000, gid=1000)
    t.file("home/u/f", b"mine", mode=0o600, uid=1000, gid=1000)
    t.file("home/big-ids", b"ids", uid=100_000, gid=200_000)
    t.dir("wdir").file("wdir/inner", b"gone")
    t.file("stamped", b"ns", mtime="1700000000.123456789")
    return t.data()


def middle_layer() -> bytes:
    """Whiteouts, an opaque dir, type replacements, names, entries before their parents."""
    t = TarBuilder()
    t.file("new/deep/file", b"child before parent")
    t.dir("new", mode=0o711).dir("new/deep", mode=0o755)
    t.whiteout("etc/gone")
    t.opaque("opq").file("opq/upper", b"kept")
    t.dir("f2d").file("f2d/inner", b"inner").file("d2f", b"now a file")
    t.symlink("f2l", "etc/passwd").dir("l2d", mode=0o750).file("l2d/y", b"y")
    t.symlink("d2l", "bin").file("l2f", b"symlink becomes file", mode=0o600)
    t.dir("attrdir", mode=0o751, uid=7, gid=8, xattrs={"user.dir": b"top"})
    t.whiteout("hl/c")
    t.file("implicit/new", b"parent not in this layer")
    t.dir("long").file(f"long/{LONG_NAME}", b"255 bytes of name")
    t.file(f"{DEEP_DIR}/f", b"deep")
    t.dir("bytes").dir(NON_UTF8_DIR).file(NON_UTF8_FILE, b"latin-1 name")
    t.file(f"{NON_UTF8_DIR}/inner", b"under a non-UTF-8 dir")
    return t.data()


def top_layer() -> bytes:
    """Changes over changes: rewrite, whiteout + re-create, opaque marker after entries."""
    t = TarBuilder()
    t.file("etc/passwd", b"root:x:0:0\nuser:x:1000:1000\n", mtime=1_700_000_100)
    t.whiteout("wdir")
    t.whiteout("etc/keep").file("etc/keep", b"new keep")
    t.file("opq2/upper", b"before the marker").opaque("opq2")
    t.dir("hl3").file("hl3/a", b"three", mode=0o4750, gid=5)
    t.hardlink("hl3/b", "hl3/a", mode=0o4750, gid=5).hardlink("hl3/c", "hl3/a", mode=0o4750, gid=5)
    t.file("f2d/inner", b"inner, rewritten", mode=0o640)
    return t.data()


def cases_image(fmt: Format, compressions: tuple[Compression, ...]) -> Image:
    tars = [base_layer(), middle_layer(), top_layer()]
    layers = []
    for tar, compression in zip(tars, compressions, strict=True):
        blob = Blob(layer_media_type(compression, fmt), compress(tar, compression))
        layers.append(Layer(blob, tar))
    return make_image(layers, fmt=fmt, platform=Platform.host())


# What containerd's own view must show, so that two empty (or equally broken) views fail.
PRESENT = (
    "etc/passwd",
    "etc/keep",
    "opq/upper",
    "opq2/upper",
    "f2d/inner",
    "l2d/y",
    "implicit/new",
    "hl/b",
    "hl3/c",
    "dev/null",
    "stamped",
    f"long/{LONG_NAME}",
)
ABSENT = (
    "etc/gone",
    "opq/lower",
    "opq/sub",
    "opq2/lower",
    "d2f/child",
    "d2l/x",
    "hl/c",
    "wdir",
    "etc/.wh.keep",
    "opq/.wh..wh..opq",
)


def check_oracle_view(view: Path) -> None:
    for rel in PRESENT:
        assert os.path.lexists(view / rel), f"containerd's view lacks {rel}"
    for rel in ABSENT:
        assert not os.path.lexists(view / rel), f"containerd's view shows {rel}"
    assert os.path.lexists(os.fsencode(view) + b"/bytes/caf\xe9")


@pytest.mark.parametrize(
    ("fmt", "compressions"),
    [("oci", ("gzip", "zstd", "none")), ("docker", ("gzip", "none", "gzip"))],
    ids=["oci-gzip-zstd-tar", "docker-gzip-tar-gzip"],
)
def test_mount_lists_like_containerd(
    containerd: Ctr,
    registry: RegistryProcess,
    tmp_path: Path,
    fmt: Format,
    compressions: tuple[Compression, ...],
) -> None:
    repo = f"oracle/{fmt}"
    registry.push_image(repo, "v1", cases_image(fmt, compressions))
    ref = f"{registry.host}/{repo}:v1"
    containerd.pull(ref)
    root = tmp_path / "fsnap"
    pulled(root, ref)
    with containerd.mounted(ref, tmp_path / "containerd-view") as view:
        check_oracle_view(view)
        want = full_listing(view)
        with image_mounted(root, ref, tmp_path / "mnt") as mnt:
            got = full_listing(mnt)
    assert got == want, "fsnap's mount differs from containerd's view:\n" + differences(
        want, got, ("containerd", "fsnap")
    )


@pytest.fixture
def nobody_root() -> Iterator[Path]:
    """An fsnap root owned by nobody, in a directory nobody can reach (pytest's tmp_path is
    0700 root); removed after."""
    base = Path(tempfile.mkdtemp(prefix="fsnap-oracle-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        (base / "root").mkdir()
        os.chown(base / "root", NOBODY, NOBODY)
        yield base / "root"
    finally:
        shutil.rmtree(base)


def test_unprivileged_pull_lists_like_containerd(
    containerd: Ctr, registry: RegistryProcess, nobody_root: Path, tmp_path: Path
) -> None:
    """fsnap unpacked as nobody (no chown, no mknod, no setuid bits or security xattrs on
    disk), mounted by root: the mount still shows what containerd, unpacking as root, shows."""
    repo = "oracle/unprivileged"
    registry.push_image(repo, "v1", cases_image("oci", ("zstd", "gzip", "none")))
    ref = f"{registry.host}/{repo}:v1"
    containerd.pull(ref)
    pulled(nobody_root, ref, uid=NOBODY)
    lower = next((nobody_root / "snapshots").rglob("dev"), None)
    assert lower is not None, "not unpacked as nobody"
    assert os.lstat(lower).st_uid == NOBODY, "not unpacked as nobody"
    with containerd.mounted(ref, tmp_path / "containerd-view") as view:
        want = full_listing(view)
        with image_mounted(nobody_root, ref, tmp_path / "mnt") as mnt:
            got = full_listing(mnt)
    assert got == want, "fsnap's mount differs from containerd's view:\n" + differences(
        want, got, ("containerd", "fsnap as nobody")
    )


def divergent_hardlink_image() -> Image:
    """A hard link whose header carries other metadata than its target's (real tar writers
    repeat the target's; a hand-made or hostile tar need not)."""
    t = TarBuilder()
    t.dir("hl").file("hl/a", b"linked", mode=0o600, uid=9, gid=9, mtime=1_700_000_000)
    t.hardlink("hl/b", "hl/a", mode=0o644, uid=0, gid=0, mtime=1_700_000_500)
    tar = t.data()
    layer = Layer(Blob(layer_media_type("gzip"), compress(tar, "gzip")), tar)
    return make_image([layer], platform=Platform.host())


def test_hardlink_header_metadata_like_containerd(
    containerd: Ctr, registry: RegistryProcess, tmp_path: Path
) -> None:
    repo = "oracle/divergent-hardlink"
    registry.push_image(repo, "v1", divergent_hardlink_image())
    ref = f"{registry.host}/{repo}:v1"
    containerd.pull(ref)
    root = tmp_path / "fsnap"
    pulled(root, ref)
    with containerd.mounted(ref, tmp_path / "containerd-view") as view:
        want = full_listing(view)
        with image_mounted(root, ref, tmp_path / "mnt") as mnt:
            got = full_listing(mnt)
    assert got == want, "fsnap's mount differs from containerd's view:\n" + differences(
        want, got, ("containerd", "fsnap")
    )


def _single_layers_image(tars: list[bytes]) -> Image:
    layers = [Layer(Blob(layer_media_type("gzip"), compress(tar, "gzip")), tar) for tar in tars]
    return make_image(layers, platform=Platform.host())


def _compare_image(
    containerd: Ctr, registry: RegistryProcess, tmp_path: Path, repo: str, image: Image
) -> list[str]:
    """Pull ``image`` with both; assert equal listings; return containerd's."""
    registry.push_image(repo, "v1", image)
    ref = f"{registry.host}/{repo}:v1"
    containerd.pull(ref)
    root = tmp_path / "fsnap"
    pulled(root, ref)
    with containerd.mounted(ref, tmp_path / "containerd-view") as view:
        want = full_listing(view)
        with image_mounted(root, ref, tmp_path / "mnt") as mnt:
            got = full_listing(mnt)
    assert got == want, "fsnap's mount differs from containerd's view:\n" + differences(
        want, got, ("containerd", "fsnap")
    )
    return want


def test_redeclared_dirs_whiteouts_in_one_layer_cross_dir_links_like_containerd(
    containerd: Ctr, registry: RegistryProcess, tmp_path: Path
) -> None:
    """``test_layer_semantics``' layers: directories named again with special bits and other
    owners, a whiteout then a file or symlink of that name inside one layer, a hard link
    across directories (the cases where containerd departs from the spec: ``layer_tars``)."""
    want = _compare_image(
        containerd,
        registry,
        tmp_path,
        "oracle/semantics",
        _single_layers_image(layer_tars(containerd_differs=False)),
    )
    text = "\n".join(want)
    for line in (
        "tmp dir mode=1777 uid=3 gid=4",
        "srv dir mode=3770 uid=9 gid=51",
        "suid dir mode=4711 uid=2",
        "hardlinks: ha/orig | hb/link",
        "f2 file",
        "s1 symlink",
        "d3 file",
    ):
        assert line in text, line


def test_symlink_header_modes_like_containerd(
    containerd: Ctr, registry: RegistryProcess, tmp_path: Path
) -> None:
    """Tar writers may give a symlink any mode (0755, 0700...): a symlink's mode means
    nothing on Linux, which shows every symlink as 0777."""
    t = TarBuilder().file("target", b"t")
    t.symlink("l755", "target", mode=0o755).symlink("l700", "target", mode=0o700, uid=5)
    t.symlink("l000", "missing", mode=0o000)
    want = _compare_image(
        containerd, registry, tmp_path, "oracle/symlink-modes", _single_layers_image([t.data()])
    )
    assert "l755 symlink mode=0777" in "\n".join(want)


def writable_base_layer() -> bytes:
    t = TarBuilder()
    t.dir("play")
    for name in ("chmod", "utime", "write", "chown"):
        t.file(
            f"play/{name}",
            b"lower data\n",
            mode=0o755,
            xattrs={"security.capability": CAP, "user.note": b"kept"},
        )
    t.file("play/regone", b"lower\n").dir("play/redir").file("play/redir/old", b"old")
    t.dir("tmp", mode=0o1777).dir("srv", mode=0o2775, gid=50)
    t.dir("ha").file("ha/orig", b"linked across\n", mode=0o640, uid=5).dir("hb")
    return t.data()


def change_writable(mnt: Path, with_socket: bool) -> None:
    """Metadata-only changes of lower files with xattrs, a directory's special bits and
    owner, whiteout and re-creation, hard links across directories, a fifo, a socket."""
    play = mnt / "play"
    os.chmod(play / "chmod", 0o700)
    os.utime(play / "utime", ns=(1_650_000_000_000_000_000,) * 2)
    with open(play / "write", "ab") as f:
        f.write(b"appended\n")
    os.chown(play / "chown", 7, 8)
    os.chown(mnt / "srv", 9, 51)
    os.chmod(mnt / "srv", 0o3770)
    (mnt / "tmp" / "new").write_bytes(b"in a sticky dir\n")
    os.unlink(play / "regone")
    (play / "regone").write_bytes(b"again\n")
    os.unlink(play / "redir" / "old")
    os.rmdir(play / "redir")
    os.mkdir(play / "redir", 0o750)
    (play / "redir" / "new").write_bytes(b"new")
    os.link(mnt / "ha" / "orig", mnt / "hb" / "link")
    (mnt / "hb" / "n1").write_bytes(b"new, linked across\n")
    os.link(mnt / "hb" / "n1", mnt / "ha" / "n2")
    os.mkfifo(play / "fifo", 0o640)
    if with_socket:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(os.fspath(play / "sock"))


@pytest.mark.parametrize("with_socket", [False, True], ids=["fifo", "socket"])
def test_writable_changes_committed_like_containerd(
    containerd: Ctr, registry: RegistryProcess, tmp_path: Path, with_socket: bool
) -> None:
    """fsnap's writable mount, changed and committed into a new image: containerd's view of
    that image equals the writable mount's listing (less the socket: no layer tar can hold
    one, and containerd's own diff skips them too) and fsnap's mount of it."""
    repo = f"oracle/rw-{'socket' if with_socket else 'fifo'}"
    registry.push_image(f"{repo}/base", "v1", _single_layers_image([writable_base_layer()]))
    base_ref = f"{registry.host}/{repo}/base:v1"
    new_ref = f"{registry.host}/{repo}/app:v2"
    root = tmp_path / "fsnap"
    pulled(root, base_ref)
    with image_mounted_rw(root, base_ref, tmp_path / "rw") as key:
        change_writable(tmp_path / "rw", with_socket)
        before = full_listing(tmp_path / "rw")
        succeeded(fsnap(root, "umount", str(tmp_path / "rw")))
    assert any(line.startswith("play/sock socket") for line in before) == with_socket
    before = [line for line in before if not line.startswith("play/sock ")]
    succeeded(fsnap(root, "commit", key, new_ref))
    succeeded(fsnap(root, "push", new_ref))
    containerd.pull(new_ref)
    with containerd.mounted(new_ref, tmp_path / "containerd-view") as view:
        want = full_listing(view)
        with image_mounted(root, new_ref, tmp_path / "mnt") as mnt:
            got = full_listing(mnt)
    assert want == before, "containerd's view differs from the writable mount:\n" + (
        differences(before, want, ("fsnap writable mount", "containerd"))
    )
    assert got == want, "fsnap's mount differs from containerd's view:\n" + differences(
        want, got, ("containerd", "fsnap")
    )
    text = "\n".join(want)
    for line in (
        "srv dir mode=3770 uid=9 gid=51",
        "tmp dir mode=1777 uid=0",
        "play/fifo fifo",
        "hardlinks: ha/orig | hb/link",
        "hardlinks: ha/n2 | hb/n1",
        "play/chmod file mode=0700 uid=0 gid=0 size=11",
        f"xattr:security.capability={CAP.hex()} xattr:user.note=6b657074 mtime",
    ):
        assert line in text, line
    assert not any(line.startswith("play/redir/old") for line in want)
