"""Shared fixtures: real registries (plain, Basic, token auth) and a fault-injecting proxy.

Registries are session-scoped (starting one costs ~0.2 s): tests sharing one must push to
distinct repository names (use the test's name). Every fixture stops what it starts, also
when the test fails. Helpers to build and push images live in ``registry_helpers``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_server import FaultServer, run_fault_server
from registry_helpers import RegistryProcess, run_registry
from token_issuer import TokenIssuer, run_issuer

from fsnap.db import Database
from fsnap.snapshots import Snapshotter

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
def sn(tmp_path: Path, db: Database) -> Snapshotter:
    """A snapshotter under ``tmp_path/state/snapshots`` on ``db``."""
    return Snapshotter(tmp_path / "state" / "snapshots", db)
