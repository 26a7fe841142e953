"""containerd uses fsnap as its snapshotter: ``fsnap serve`` as a proxy plugin.

A private containerd (Debian's, started here with its own root and sockets) has
``[proxy_plugins.fsnap]`` pointing at ``fsnap serve``'s socket. ``ctr`` then pulls, unpacks
and runs (with Debian's runc) images on fsnap's snapshots, and what containerd made is in
fsnap's store for fsnap's own commands. Skipped only where containerd cannot run (under
CI that is a failure, as for the oracle tests).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import needs
from support.cli import fsnap
from support.containerd import NAMESPACE, ContainerdUnavailable, Ctr, run_containerd
from support.registry import (
    Image,
    RegistryProcess,
    busybox_members,
    make_image,
    make_layer,
)
from support.serve import Served, containerd_env, proxy_config, run_serve, start_serve

from fsnap.serve.backend import OWNER
from fsnap.snapshots.info import OWNER_LABEL


@pytest.fixture
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """fsnap serve on its own root; short paths (a socket path holds 107 bytes at most)."""
    base = tmp_path_factory.mktemp("serve")
    with run_serve(base / "root", base / "run" / "fsnap.sock", base / "serve.log") as s:
        yield s


@pytest.fixture
def ctr(tmp_path_factory: pytest.TempPathFactory, served: Served) -> Iterator[Ctr]:
    if shutil.which("runc") is None and os.environ.get("CI"):
        pytest.fail("runc is missing: scripts/setup installs it")
    try:
        with run_containerd(
            tmp_path_factory.mktemp("ctrd"), proxy_config(served.address), containerd_env()
        ) as running:
            yield running
    except ContainerdUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"containerd must run under CI (scripts/setup installs it): {exc}")
        needs.unavailable(f"containerd cannot run here: {exc}")


def layered_image() -> Image:
    """busybox, then a layer that adds, replaces and deletes (a whiteout) and makes an
    opaque directory: containerd must write all of it through fsnap-overlay."""
    base = make_layer(busybox_members())
    extra = {
        "etc/": b"",
        "etc/motd": b"hello from layer 1\n",
        "srv/": b"",
        "srv/old": b"gone later\n",
        "srv/keep": b"kept\n",
        "var/": b"",
        "var/cache/": b"",
        "var/cache/a": b"a\n",
    }
    top = {
        "etc/": b"",
        "etc/motd": b"hello from the top layer\n",
        "srv/": b"",
        "srv/.wh.old": b"",
        "var/": b"",
        "var/cache/": b"",
        "var/cache/.wh..wh..opq": b"",
        "var/cache/b": b"b\n",
    }
    image: Image = make_image(
        [base, make_layer(extra), make_layer(top)],
        config={"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
    )
    return image


RECOVERY = 20.0  # seconds containerd may take to reach a restarted fsnap serve


def pull(ctr: Ctr, ref: str) -> None:
    ctr.run("images", "pull", "--plain-http", "--snapshotter", "fsnap", ref)


# Every path of the container's own root file system (not /proc, /dev, /sys), with mode,
# owner and, except for directories (whose size depends on the file system), size.
LISTING = (
    "find / -xdev ! -path /sys ! -path /proc ! -path /dev | sort | while read p; do "
    'if [ -d "$p" ]; then stat -c \'%n %f %u %g\' "$p"; '
    "else stat -c '%n %f %u %g %s' \"$p\"; fi; done"
)


def container_listing(ctr: Ctr, ref: str, name: str, snapshotter: str) -> list[str]:
    done = ctr.run("run", "--rm", "--snapshotter", snapshotter, ref, name, "/bin/sh", "-c", LISTING)
    return done.stdout.splitlines()


@pytest.mark.needs_containerd
def test_ctr_pulls_and_runs_on_fsnap(ctr: Ctr, served: Served, registry: RegistryProcess) -> None:
    ref = f"{registry.host}/serve/run:latest"
    registry.push_image("serve/run", "latest", layered_image())
    pull(ctr, ref)
    done = ctr.run(
        "run",
        "--rm",
        "--snapshotter",
        "fsnap",
        ref,
        "hello",
        "/bin/sh",
        "-c",
        "cat /etc/motd; ls /srv; ls /var/cache",
    )
    assert done.stdout.split("\n")[:3] == ["hello from the top layer", "keep", "b"]
    # the rootfs seen from inside equals the one containerd's own overlayfs snapshotter gives
    ctr.run("images", "pull", "--plain-http", "--snapshotter", "overlayfs", ref)
    ours = container_listing(ctr, ref, "list-fsnap", "fsnap")
    theirs = container_listing(ctr, ref, "list-overlayfs", "overlayfs")
    assert len(ours) > 20
    assert ours == theirs
    # what containerd made is in fsnap's store: three committed layers, owned by containerd
    listed = fsnap(served.root, "snapshots", "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    committed = [s for s in json.loads(listed.stdout) if s["kind"] == "committed"]
    assert len(committed) == 3
    assert all(s["labels"].get(OWNER_LABEL) == OWNER for s in committed)
    # fsnap's gc leaves them alone (containerd removes them through the API)
    assert fsnap(served.root, "gc").returncode == 0
    after = json.loads(fsnap(served.root, "snapshots", "ls", "--json").stdout)
    assert {s["name"] for s in committed} <= {s["name"] for s in after}


@pytest.mark.needs_containerd
def test_layers_containerd_unpacked_mount_in_fsnap(
    ctr: Ctr, served: Served, registry: RegistryProcess, tmp_path: Path
) -> None:
    """containerd's unpack through fsnap-overlay ends as fsnap layers: whiteouts and the
    opaque directory are in the index, and fsnap's own mount of the top layer shows them."""
    ref = f"{registry.host}/serve/mount:latest"
    registry.push_image("serve/mount", "latest", layered_image())
    pull(ctr, ref)
    infos = json.loads(fsnap(served.root, "snapshots", "ls", "--json").stdout)
    top = next(
        i["name"]
        for i in infos
        if i["kind"] == "committed" and not any(j["parent"] == i["name"] for j in infos)
    )
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = fsnap(served.root, "snapshots", "mount", top, str(mnt))
    assert done.returncode == 0, done.stderr
    try:
        assert (mnt / "etc/motd").read_text() == "hello from the top layer\n"
        assert sorted(os.listdir(mnt / "srv")) == ["keep"]
        assert sorted(os.listdir(mnt / "var/cache")) == ["b"]
        assert os.path.islink(mnt / "bin/sh")
    finally:
        fsnap(served.root, "umount", str(mnt))


@pytest.mark.needs_containerd
def test_commit_of_a_container_snapshot_keeps_its_file(
    ctr: Ctr, served: Served, registry: RegistryProcess, tmp_path: Path
) -> None:
    ref = f"{registry.host}/serve/commit:latest"
    registry.push_image("serve/commit", "latest", layered_image())
    pull(ctr, ref)
    ctr.run(
        "run",
        "--snapshotter",
        "fsnap",
        ref,
        "writer",
        "/bin/sh",
        "-c",
        "echo written > /root/new; rm /etc/motd",
    )
    ctr.run("snapshots", "--snapshotter", "fsnap", "commit", "saved", "writer")
    ctr.run("containers", "rm", "writer")
    infos = json.loads(fsnap(served.root, "snapshots", "ls", "--json").stdout)
    saved = next(i["name"] for i in infos if i["name"].endswith("/saved"))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = fsnap(served.root, "snapshots", "mount", saved, str(mnt))
    assert done.returncode == 0, done.stderr
    try:
        assert (mnt / "root/new").read_text() == "written\n"
        assert not (mnt / "etc/motd").exists()
    finally:
        fsnap(served.root, "umount", str(mnt))


@pytest.mark.needs_containerd
def test_image_pulled_by_fsnap_is_not_applied_again(
    ctr: Ctr, served: Served, registry: RegistryProcess
) -> None:
    ref = f"{registry.host}/serve/prepulled:latest"
    registry.push_image("serve/prepulled", "latest", layered_image())
    done = fsnap(served.root, "pull", ref)
    assert done.returncode == 0, done.stderr
    commits_before = len(served.calls("Commit"))
    # ctr 1.6's `images pull` unpacks through rootfs.ApplyLayer, which names no target
    # snapshot; containerd's client Pull with unpacking (CRI, nerdctl, ctr-remote rpull)
    # labels each Prepare with containerd.io/snapshot.ref, the protocol remote snapshotters use.
    argv = [
        "ctr-remote",
        "-a",
        str(ctr.socket),
        "-n",
        NAMESPACE,
        "images",
        "rpull",
        "--plain-http",
        "--snapshotter",
        "fsnap",
        ref,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=ctr.env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(served.calls("Commit")) == commits_before, "containerd applied layers again"
    adopted = [line for line in served.calls("Prepare") if "AlreadyExists" in line]
    assert len(adopted) == 3
    done = ctr.run("run", "--rm", "--snapshotter", "fsnap", ref, "pre", "/bin/cat", "/etc/motd")
    assert done.stdout == "hello from the top layer\n"


@pytest.mark.needs_containerd
def test_restarts_on_either_side(
    served: Served, registry: RegistryProcess, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """containerd restarted while fsnap serve runs, then fsnap serve restarted while
    containerd runs: the next container starts either way."""
    ref = f"{registry.host}/serve/restart:latest"
    registry.push_image("serve/restart", "latest", layered_image())
    base = tmp_path_factory.mktemp("ctrd")
    config = proxy_config(served.address)
    with run_containerd(base, config, containerd_env()) as first:
        pull(first, ref)
    with run_containerd(base, config, containerd_env()) as second:
        done = second.run(
            "run",
            "--rm",
            "--snapshotter",
            "fsnap",
            ref,
            "after-containerd-restart",
            "/bin/cat",
            "/etc/motd",
        )
        assert done.stdout == "hello from the top layer\n"
        assert served.stop() == 0  # SIGTERM: a clean exit, the socket file removed
        assert not served.address.exists()
        served.process = start_serve(served.root, served.address, served.log).process
        # containerd redials a proxy plugin with a backoff of at most 3 s
        deadline = time.monotonic() + RECOVERY
        while True:
            try:
                done = second.run(
                    "run",
                    "--rm",
                    "--snapshotter",
                    "fsnap",
                    ref,
                    "after-serve-restart",
                    "/bin/cat",
                    "/etc/motd",
                )
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        assert done.stdout == "hello from the top layer\n"


def test_serve_refuses_a_socket_in_use(served: Served, tmp_path: Path) -> None:
    done = fsnap(tmp_path / "other", "serve", "--address", str(served.address))
    assert done.returncode == 11, done.stderr
    assert "in use" in done.stderr
    assert served.process.poll() is None
