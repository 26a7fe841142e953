"""Unix sockets in writable mounts and fsnap-overlay: ``bind()`` creates one in the upper
directory, it behaves like any other entry (stat, chmod, chown, rename, link, unlink,
readdir) and survives a remount; commits leave it out and say so.

Sockets are bound and used from child processes (``BIND``), never from the daemon."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from image_builder import make_image, make_layer
from support.cli import NOBODY, fsnap
from support.mount import cleanup
from support.overlay import fsnap_overlay, kernel_overlay, lowerdir, write_stack
from support.registry import RegistryProcess
from support.rw import mount_pid, shared_dir

from fsnap import oci
from fsnap.archive.compression import open_uncompressed
from fsnap.client import Client

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_fuse]

# bind NAME in the working directory (AF_UNIX paths are short: 108 bytes), then connect to
# it and exchange one message through it.
BIND = """
import socket, sys
name = sys.argv[1]
server = socket.socket(socket.AF_UNIX)
server.bind(name)
server.listen(1)
client = socket.socket(socket.AF_UNIX)
client.connect(name)
peer, _ = server.accept()
client.sendall(b"ping")
assert peer.recv(4) == b"ping"
print("bound")
"""


def bind_in(directory: Path, name: str) -> None:
    done = subprocess.run(
        [sys.executable, "-I", "-c", BIND, name],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "bound\n", done.stderr


def is_socket(path: Path) -> bool:
    return stat.S_ISSOCK(os.lstat(path).st_mode)


@pytest.fixture
def shared() -> Iterator[Path]:
    with shared_dir() as path:
        yield path


def test_sockets_in_a_writable_mount(
    registry: RegistryProcess, tmp_path: Path, shared: Path
) -> None:
    image = make_image(
        [make_layer({"run/": b"", "etc/motd": "hello\n"})], platform=oci.Platform.host()
    )
    registry.push_image("rw/sockets", "v1", image)
    root, ref = tmp_path / "root", f"{registry.host}/rw/sockets:v1"
    mnt = shared / "mnt"
    mnt.mkdir()
    pid = 0
    try:
        done = fsnap(root, "mount", "--rw", "--pull", "--key", "sock", ref, str(mnt))
        assert done.returncode == 0, done.stderr
        pid = mount_pid(root, mnt)
        run = mnt / "run"
        bind_in(run, "app.sock")
        assert is_socket(run / "app.sock")
        os.chmod(run / "app.sock", 0o640)
        os.chown(run / "app.sock", NOBODY, NOBODY)
        os.rename(run / "app.sock", run / "moved.sock")
        os.link(run / "moved.sock", run / "linked.sock")
        assert os.lstat(run / "linked.sock").st_nlink == 2
        bind_in(run, "gone.sock")
        os.unlink(run / "gone.sock")
        with os.scandir(run) as listed:
            kinds = {e.name: stat.S_IFMT(e.stat(follow_symlinks=False).st_mode) for e in listed}
        assert kinds == {"moved.sock": stat.S_IFSOCK, "linked.sock": stat.S_IFSOCK}
        assert fsnap(root, "umount", str(mnt)).returncode == 0
        again = fsnap(root, "snapshots", "mount", "sock", str(mnt))
        assert again.returncode == 0, again.stderr
        pid = mount_pid(root, mnt)
        st = os.lstat(run / "linked.sock")
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o640
        assert (st.st_uid, st.st_gid, st.st_nlink) == (NOBODY, NOBODY, 2)
        bind_in(run, "fresh.sock")  # a socket over a remounted tree binds as well
        assert fsnap(root, "umount", str(mnt)).returncode == 0

        committed = fsnap(root, "commit", "sock", "example.com/sock:new")
        assert committed.returncode == 0, committed.stderr
        assert "Unix socket" in committed.stderr
        assert "/run/linked.sock" in committed.stderr
        with Client(root) as client:
            manifest = client.content.read(client.images.get("example.com/sock:new").target.digest)
            layer = oci.Descriptor.from_json(__import__("json").loads(manifest)["layers"][-1])
            tar = open_uncompressed(
                io.BytesIO(client.content.read(layer.digest)), layer.media_type
            ).read()
        with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
            names = archive.getnames()
        assert not [n for n in names if n.endswith(".sock")], names

        done = fsnap(root, "snapshots", "commit", "sock-done", "sock")
        assert done.returncode == 0, done.stderr
        assert "3 Unix socket(s)" in done.stderr, done.stderr
        with Client(root) as client:
            index = client.snapshots.index.read("sock-done")
            assert not [e for e in index if e.kind == "socket"]
            assert not list((client.snapshots.dir("sock-done") / "run").iterdir())
    finally:
        cleanup(root, mnt, pid)


def _writable(base: Path, lowers: list[Path]) -> str:
    for sub in ("upper", "work"):
        (base / sub).mkdir(parents=True)
    return f"{lowerdir(lowers)},upperdir={base / 'upper'},workdir={base / 'work'}"


def test_sockets_in_fsnap_overlay(tmp_path: Path) -> None:
    lowers = write_stack(tmp_path / "lowers", "chardev")
    options = _writable(tmp_path / "f", lowers)
    with fsnap_overlay(options, tmp_path / "fsnap") as mnt:
        bind_in(mnt / "etc", "app.sock")
        os.rename(mnt / "etc" / "app.sock", mnt / "data" / "app.sock")
        os.chmod(mnt / "data" / "app.sock", 0o600)
        assert is_socket(mnt / "data" / "app.sock")
    upper = tmp_path / "f" / "upper"
    assert is_socket(upper / "data" / "app.sock")  # in the upper, as overlayfs keeps it
    with fsnap_overlay(options, tmp_path / "again") as again:
        st = os.lstat(again / "data" / "app.sock")
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert not os.path.lexists(again / "etc" / "app.sock")
    with kernel_overlay([upper, *lowers], tmp_path / "kernel") as kernel:
        assert is_socket(kernel / "data" / "app.sock")
