"""The processes a benchmark runs: a local registry and a private containerd.

Both are context managers that stop what they start, also on errors and Ctrl-C; their pids
also go to ``<work>/pids`` so the shell wrapper's trap can stop them if Python itself dies.
The registry code is the test suite's (``tests/support/registry.py``), reused by import.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from benchlib.image import ImageInfo, blob_path
from benchlib.rootfs import apt_install_missing

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from image_builder import Blob  # noqa: E402
from support.registry import RegistryProcess, run_registry  # noqa: E402

from fsnap import oci  # noqa: E402

NAMESPACE = "bench"
START_TIMEOUT = 30.0


def remember_pid(work: Path, pid: int) -> None:
    """Tell the shell wrapper's trap about a process to stop if we die uncleanly."""
    with open(work / "pids", "a") as out:
        out.write(f"{pid}\n")


@contextmanager
def registry(work: Path) -> Iterator[RegistryProcess]:
    apt_install_missing("docker-registry", "docker-registry")
    with run_registry(work / "registry") as running:
        remember_pid(work, running.process.pid)
        yield running


def push(reg: RegistryProcess, images_dir: Path, info: ImageInfo) -> str:
    """Push a stored image as ``bench/<name>:1``; return the reference."""
    repo = f"bench/{info.name}"
    with reg.pusher() as pusher:
        for layer in info.layers:
            data = blob_path(images_dir, info.name, str(layer["digest"])).read_bytes()
            pusher.push_blob(repo, Blob(str(layer["media_type"]), data))
        config = blob_path(images_dir, info.name, info.config_digest).read_bytes()
        pusher.push_blob(repo, Blob(oci.OCI_CONFIG, config))
        manifest = (images_dir / info.name / "manifest.json").read_bytes()
        pusher.push_manifest(repo, "1", Blob(oci.OCI_MANIFEST, manifest))
    return f"{reg.host}/{repo}:1"


@dataclass
class Containerd:
    """A running containerd with its own root, state and socket."""

    root: Path
    socket: Path
    process: subprocess.Popen[bytes]

    def ctr(self, *args: str) -> list[str]:
        """The ``ctr`` command line for ``args`` against this daemon and namespace."""
        return ["ctr", "-a", str(self.socket), "-n", NAMESPACE, *args]

    def run(self, *args: str) -> str:
        done = subprocess.run(self.ctr(*args), check=True, capture_output=True, text=True)
        return done.stdout

    def lowerdirs(self, key: str, top_chain_id: str) -> list[str]:
        """The overlayfs snapshotter's directories for ``top_chain_id``, top first, from a
        view's mounts (a one-layer chain is a bind mount of its only directory)."""
        mounts = json.loads(self.run("snapshots", "view", "--mounts", key, top_chain_id))
        mount = mounts[0]
        if mount["Type"] == "bind":
            return [mount["Source"]]
        for option in mount["Options"]:
            if option.startswith("lowerdir="):
                return list(option.removeprefix("lowerdir=").split(":"))
        raise RuntimeError(f"no lowerdir in {mount}")


@contextmanager
def containerd(
    work: Path,
    name: str,
    *,
    keep: bool = False,
    extra_config: str = "",
    env: dict[str, str] | None = None,
) -> Iterator[Containerd]:
    """Start containerd on fresh directories ``<work>/<name>``; stop it and delete them after
    (unless ``keep``: then they stay for the caller to delete, e.g. with the work directory).
    ``extra_config`` is appended to its config; ``env`` replaces its environment."""
    apt_install_missing("containerd", "containerd")
    base = work / name
    base.mkdir(parents=True)
    socket = base / "c.sock"
    config = base / "config.toml"
    config.write_text(
        "version = 2\n"
        f'root = "{base / "root"}"\n'
        f'state = "{base / "state"}"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{socket}"\n'
        f'[ttrpc]\n  address = "{socket}.ttrpc"\n'
        f"{extra_config}\n"
    )
    with open(base / "containerd.log", "ab") as log:
        process = subprocess.Popen(
            ["containerd", "--config", str(config)],
            stdout=log,
            stderr=log,
            start_new_session=True,
            env=env,
        )
    remember_pid(work, process.pid)
    try:
        _wait_for_socket(process, socket, base / "containerd.log")
        yield Containerd(base / "root", socket, process)
    finally:
        _unmount_under(base)
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        _unmount_under(base)
        if not keep:
            shutil.rmtree(base, ignore_errors=True)


def _wait_for_socket(process: subprocess.Popen[bytes], socket: Path, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        if socket.exists():
            probe = subprocess.run(["ctr", "-a", str(socket), "version"], capture_output=True)
            if probe.returncode == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"containerd did not start:\n{log.read_text(errors='replace')[-2000:]}")


def _unmount_under(base: Path) -> None:
    """Lazily unmount anything containerd left mounted below ``base`` (deepest first)."""
    prefix = str(base) + "/"
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def env_without_proxy() -> dict[str, str]:
    """ctr and fsnap must reach 127.0.0.1 directly whatever proxy the shell has set."""
    env = dict(os.environ)
    for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(key, None)
    return env
