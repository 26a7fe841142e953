"""Shared fixtures: real registries (plain, Basic, token auth) and a fault-injecting proxy.

Registries are session-scoped (starting one costs ~0.2 s): tests sharing one must push to
distinct repository names (use the test's name). Every fixture stops what it starts, also
when the test fails. Helpers to build and push images live in ``support.registry``.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_server import FaultServer, run_fault_server
from support.registry import RegistryProcess, run_registry
from token_issuer import TokenIssuer, run_issuer

from fsnap.db import Database
from fsnap.snapshots import LocalSnapshotter

# needs_root / needs_fuse / needs_containerd: skipped with the reason where the machine
# lacks it, failed instead in CI (CI=true).
pytest_plugins = ["support.needs"]


REGISTRY_USER = "alice"
REGISTRY_PASSWORD = "wonderland"


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    """A real, unauthenticated registry on 127.0.0.1: ``.host``, ``.url``, ``.push_image()``."""
    with run_registry(tmp_path_factory.mktemp("registry")) as running:
        yield running


@pytest.fixture(scope="session")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    """A registry behind htpasswd Basic auth; its user is ``.username`` / ``.password``."""
    root = tmp_path_factory.mktemp("basic-registry")
    htpasswd = subprocess.run(
        ["htpasswd", "-Bbn", REGISTRY_USER, REGISTRY_PASSWORD],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    (root / "htpasswd").write_text(htpasswd)
    auth = {"htpasswd": {"realm": "fsnap-tests", "path": str(root / "htpasswd")}}
    with run_registry(root, auth) as running:
        running.username, running.password = REGISTRY_USER, REGISTRY_PASSWORD
        yield running


@pytest.fixture(scope="session")
def token_issuer() -> Iterator[TokenIssuer]:
    """The in-process JWT issuer behind ``token_registry`` (``.requests`` logs its work)."""
    with run_issuer(REGISTRY_USER, REGISTRY_PASSWORD) as issuer:
        yield issuer


@pytest.fixture(scope="session")
def token_registry(
    tmp_path_factory: pytest.TempPathFactory, token_issuer: TokenIssuer
) -> Iterator[RegistryProcess]:
    """A registry with Bearer token auth (``.issuer``): anonymous pull allowed except for
    repositories under ``private/``; push and private pull need ``.username``/``.password``."""
    root = tmp_path_factory.mktemp("token-registry")
    with run_registry(root, token_issuer.registry_auth(root / "issuer.pem")) as running:
        running.username, running.password = REGISTRY_USER, REGISTRY_PASSWORD
        running.issuer = token_issuer
        yield running


@pytest.fixture
def fault_server(registry: RegistryProcess) -> Iterator[FaultServer]:
    """A proxy in front of ``registry`` that injects faults when armed (see fault_server.py).

    Push through ``registry``; point the client under test at ``fault_server.host``.
    """
    with run_fault_server(registry.host) as server:
        yield server


@pytest.fixture
def docker_config(tmp_path: Path) -> Path:
    """Where a test may write a docker ``config.json`` (the file does not exist yet)."""
    return tmp_path / "docker" / "config.json"


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    """An LMDB environment under ``tmp_path/state``, closed after the test."""
    database = Database(tmp_path / "state")
    try:
        yield database
    finally:
        database.close()


@pytest.fixture
def sn(tmp_path: Path, db: Database) -> LocalSnapshotter:
    """A snapshotter under ``tmp_path/state/snapshots`` on ``db``."""
    return LocalSnapshotter(tmp_path / "state" / "snapshots", db)


# --- the file system under fsnap's root --------------------------------------------------

ROOT_FILESYSTEMS = ["disk", "tmpfs", "overlayfs"]


@contextlib.contextmanager
def _mounted(argv: list[str], mnt: Path) -> Iterator[None]:
    """``argv`` mounts something at ``mnt``; unmounted (lazily if busy) whatever happens."""
    mnt.mkdir(parents=True, exist_ok=True)
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    try:
        yield
    finally:
        done = subprocess.run(["umount", str(mnt)], capture_output=True, check=False)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


@contextlib.contextmanager
def filesystem_at(kind: str, base: Path) -> Iterator[Path]:
    """A directory on file system ``kind`` under ``base``: ``base`` itself for "disk" (the
    test machine's own), else a tmpfs or an overlayfs (lower, upper and work on disk)
    mounted for the test and unmounted after, also when it fails. Stores live on all three
    (CI runners keep them on tmpfs, containers on overlayfs); each answers the fast paths
    (RWF_NOWAIT, O_NOATIME) its own way."""
    if kind == "disk":
        yield base
        return
    mnt = base / f"on-{kind}"
    if kind == "tmpfs":
        argv = ["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(mnt)]
    else:
        parts = {name: base / f"overlay-{name}" for name in ("lower", "upper", "work")}
        for part in parts.values():
            part.mkdir(parents=True)
        argv = [
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={parts['lower']},upperdir={parts['upper']},workdir={parts['work']}",
            str(mnt),
        ]
    with _mounted(argv, mnt):
        yield mnt


@pytest.fixture(params=ROOT_FILESYSTEMS)
def fs_base(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A directory for fsnap's root on each file system in turn."""
    with filesystem_at(request.param, tmp_path) as base:
        yield base


@pytest.fixture(params=["disk", "tmpfs"])
def stack_base(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A directory for an overlay stack (lowers, upper, work) on disk, then on tmpfs. Not on
    overlayfs: its own whiteouts and ``trusted.overlay.*`` xattrs would be taken by it."""
    with filesystem_at(request.param, tmp_path) as base:
        yield base
