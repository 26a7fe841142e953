"""Registry host configuration: containerd's hosts.toml (mirrors, TLS, headers) and docker's
certs.d layout, against real registries (plain, TLS with a private CA, TLS demanding a
client certificate), plus Docker Hub names served through a mirror, as air-gapped sites do.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import trio
from support.cli import fsnap, succeeded
from support.http import serving
from support.registry import Image, RegistryProcess, make_image, make_layer, run_registry
from support.tls import TlsFiles, make_client_cert, make_tls

from fsnap.errors import InvalidArgument
from fsnap.reference import Reference
from fsnap.remotes.hosts import Hosts
from fsnap.remotes.registry import RegistryClient

DEAD = "http://127.0.0.1:1"  # nothing listens on port 1: refused at once


def small_image(text: str) -> Image:
    image: Image = make_image([make_layer({"etc/": b"", "etc/id": text.encode()})])
    return image


def write_hosts(directory: Path, domain: str, text: str) -> Path:
    (directory / domain).mkdir(parents=True, exist_ok=True)
    (directory / domain / "hosts.toml").write_text(text)
    return directory


def test_docker_hub_name_through_a_mirror(registry: RegistryProcess, tmp_path: Path) -> None:
    """``fsnap pull debian`` is docker.io/library/debian:latest; a hosts.toml sends it to
    the local registry (the upstream is unreachable, as on an air-gapped site)."""
    registry.push_image("library/debian", "latest", small_image("hub debian\n"))
    hosts = write_hosts(
        tmp_path / "certs.d",
        "docker.io",
        f'''
server = "{DEAD}"
[host."http://{registry.host}"]
  capabilities = ["pull", "resolve"]
''',
    )
    root = tmp_path / "root"
    out = succeeded(fsnap(root, "pull", "--hosts-dir", str(hosts), "debian"))
    assert "docker.io/library/debian:latest" in out
    table = succeeded(fsnap(root, "images"))
    assert "debian:latest" in table.split()
    done = fsnap(
        root,
        "pull",
        "--hosts-dir",
        str(tmp_path / "empty"),
        "--plain-http",
        "127.0.0.1:1/library/x",
    )
    assert done.returncode == 10
    assert "giving up" in done.stderr.strip().splitlines()[-1]


def test_failing_mirror_falls_back_and_says_so(registry: RegistryProcess, tmp_path: Path) -> None:
    image = small_image("fallback\n")
    registry.push_image("hosts/fallback", "v1", image)
    hosts = write_hosts(
        tmp_path / "certs.d",
        "mirrored.example",
        f'''
server = "http://{registry.host}"
[host."{DEAD}"]
  capabilities = ["pull", "resolve"]
[host."http://{registry.host}"]
  capabilities = ["pull", "resolve"]
''',
    )
    ref = Reference.parse("mirrored.example/hosts/fallback:v1")

    async def fetch() -> tuple[bytes, list[str]]:
        async with RegistryClient(hosts_dirs=[hosts], backoff_base=0.01) as client:
            desc = await client.resolve(ref)
            data = await client.fetch_manifest(ref, desc)
            return data, [event.reason for event in client.retries]

    data, reasons = trio.run(fetch)
    assert data == image.manifest.data
    assert any(
        DEAD in reason and f"trying http://{registry.host}" in reason for reason in reasons
    ), reasons


def test_mirror_without_resolve_is_not_asked_for_tags(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    """A pull-only mirror serves blobs and manifests by digest; tags resolve upstream."""
    image = small_image("pull only\n")
    registry.push_image("hosts/pull-only", "v1", image)
    hosts = write_hosts(
        tmp_path / "certs.d",
        registry.host,
        f'''
[host."{DEAD}"]
  capabilities = ["pull"]
''',
    )
    ref = Reference.parse(f"{registry.host}/hosts/pull-only:v1")

    async def resolve() -> list[str]:
        async with RegistryClient(hosts_dirs=[hosts], backoff_base=0.01) as client:
            await client.resolve(ref)
            return [event.reason for event in client.retries]

    assert trio.run(resolve) == []  # the dead mirror was never tried for the tag


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls(tmp_path_factory.mktemp("hosts-tls"))


@pytest.fixture
def tls_registry(tmp_path: Path, tls: TlsFiles) -> Iterator[RegistryProcess]:
    with run_registry(tmp_path / "tls-registry", tls=tls) as running:
        yield running


def test_private_ca_in_docker_certs_d(
    tls_registry: RegistryProcess, tls: TlsFiles, tmp_path: Path
) -> None:
    tls_registry.push_image("hosts/tls", "v1", small_image("tls\n"))
    ref = f"{tls_registry.host}/hosts/tls:v1"
    root = tmp_path / "root"
    certs = tmp_path / "certs.d"
    (certs / tls_registry.host).mkdir(parents=True)
    other = make_tls(tmp_path / "other-ca")  # a CA that did not sign the registry's cert
    (certs / tls_registry.host / "ca.crt").write_bytes(other.ca.read_bytes())
    done = fsnap(root, "pull", "--hosts-dir", str(certs), "--no-unpack", ref)
    assert done.returncode != 0, done.stderr
    assert "certificate" in done.stderr.lower(), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    (certs / tls_registry.host / "ca.crt").write_bytes(tls.ca.read_bytes())
    succeeded(fsnap(root, "pull", "--hosts-dir", str(certs), "--no-unpack", ref))


def test_client_certificate_from_hosts_toml(tls: TlsFiles, tmp_path: Path) -> None:
    with run_registry(tmp_path / "mtls", tls=tls, client_ca=tls.ca) as mtls:
        mtls.push_image("hosts/mtls", "v1", small_image("mtls\n"))
        ref = f"{mtls.host}/hosts/mtls:v1"
        certs = tmp_path / "certs.d"
        write_hosts(
            certs,
            mtls.host,
            f"""
server = "https://{mtls.host}"
ca = "ca.pem"
""",
        )
        (certs / mtls.host / "ca.pem").write_bytes(tls.ca.read_bytes())
        root = tmp_path / "root"
        done = fsnap(root, "pull", "--hosts-dir", str(certs), "--no-unpack", ref)
        assert done.returncode != 0, "the registry let in a client without a certificate"
        cert, key = make_client_cert(tls, tmp_path / "client")
        write_hosts(
            certs,
            mtls.host,
            f'''
server = "https://{mtls.host}"
ca = "ca.pem"
client = [["{cert}", "{key}"]]
''',
        )
        succeeded(fsnap(root, "pull", "--hosts-dir", str(certs), "--no-unpack", ref))


@pytest.mark.parametrize(
    "text",
    [
        'server = "ftp://x"',
        '[host."https://m"]\n  capabilities = ["pull", "delete"]',
        '[host."https://m".header]\n  x = "a\\nb"',
        "this is not toml",
        "host = 3",
    ],
)
def test_bad_hosts_toml_is_a_clear_error(tmp_path: Path, text: str) -> None:
    hosts = write_hosts(tmp_path / "certs.d", "bad.example", text)
    with pytest.raises(InvalidArgument):
        Hosts([hosts]).for_("bad.example")
    done = fsnap(tmp_path / "root", "pull", "--hosts-dir", str(hosts), "bad.example/x:1")
    assert done.returncode == 4, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_oversized_hosts_toml_is_refused(tmp_path: Path) -> None:
    hosts = write_hosts(tmp_path / "certs.d", "big.example", "# " + "x" * 70_000)
    with pytest.raises(InvalidArgument, match="larger"):
        Hosts([hosts]).for_("big.example")


def test_header_and_override_path(tmp_path: Path) -> None:
    hosts = write_hosts(
        tmp_path / "certs.d",
        "docker.io",
        """
[host."https://mirror.example/registry/v2"]
  override_path = true
  [host."https://mirror.example/registry/v2".header]
    x-site = ["a", "b"]
[host."https://cache.example/prefix"]
""",
    )
    mirror, cache, upstream = Hosts([hosts]).for_("docker.io")
    assert mirror.url("/v2/library/x/manifests/1") == (
        "https://mirror.example/registry/v2/library/x/manifests/1"
    )
    assert mirror.headers == (("x-site", "a"), ("x-site", "b"))
    assert cache.url("/v2/") == "https://cache.example/prefix/v2/"
    assert upstream.base == "https://registry-1.docker.io"
    assert not upstream.mirror


class _ConnectProxy(BaseHTTPRequestHandler):
    """An HTTPS proxy: CONNECT, then bytes both ways. Records what it was asked for."""

    seen: ClassVar[list[str]] = []

    def do_CONNECT(self) -> None:  # noqa: N802 (http.server's naming)
        type(self).seen.append(self.path)
        host, _, port = self.path.rpartition(":")
        upstream = socket.create_connection((host, int(port)), timeout=10)
        self.send_response(200, "Connection established")
        self.end_headers()
        sockets = [self.connection, upstream]
        try:
            while True:
                ready, _, _ = select.select(sockets, [], [], 10)
                if not ready:
                    return
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (upstream if sock is self.connection else self.connection).sendall(data)
        finally:
            upstream.close()

    def log_message(self, *args: object) -> None:
        pass


def test_https_proxy_from_the_environment(
    tls_registry: RegistryProcess, tls: TlsFiles, tmp_path: Path
) -> None:
    tls_registry.push_image("hosts/proxied", "v1", small_image("proxied\n"))
    ref = f"{tls_registry.host}/hosts/proxied:v1"
    certs = tmp_path / "certs.d"
    (certs / tls_registry.host).mkdir(parents=True)
    (certs / tls_registry.host / "ca.crt").write_bytes(tls.ca.read_bytes())
    _ConnectProxy.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ConnectProxy)
    with serving(server, "connect-proxy") as port:
        env = {"HTTPS_PROXY": f"http://127.0.0.1:{port}", "NO_PROXY": ""}
        done = fsnap_env(
            tmp_path / "root", env, "pull", "--hosts-dir", str(certs), "--no-unpack", ref
        )
        assert done.returncode == 0, done.stderr
        assert _ConnectProxy.seen
        assert all(s == tls_registry.host for s in _ConnectProxy.seen)
        _ConnectProxy.seen = []
        env["NO_PROXY"] = "127.0.0.1"
        done = fsnap_env(
            tmp_path / "root2", env, "pull", "--hosts-dir", str(certs), "--no-unpack", ref
        )
        assert done.returncode == 0, done.stderr
        assert _ConnectProxy.seen == []


def fsnap_env(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    return subprocess.run(
        [sys.executable, "-m", "fsnap.cli", "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, **env},
    )
