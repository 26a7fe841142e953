"""A real registry for tests: run CNCF distribution 2.8, and push images to it.

``RegistryProcess`` runs Debian's ``/usr/bin/docker-registry`` on a free loopback port with
filesystem storage under a temporary directory; ``Pusher`` uploads blobs and manifests with
the plain distribution API (monolithic POST + PUT), answering Basic and Bearer challenges
itself so that pushing never depends on the fsnap code under test.

The image builders of ``image_builder`` are re-exported: ``from support.registry import *``.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from image_builder import *  # noqa: F403 (re-exported for tests)
from image_builder import Blob, Image, ImageIndex

from fsnap import oci
from fsnap.reference import Reference
from support.proc import stop
from support.tls import TlsFiles

REGISTRY_BIN = Path("/usr/bin/docker-registry")
STARTUP_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RegistryProcess:
    """A running registry: ``host`` is ``127.0.0.1:PORT``, ``url`` is ``http://host``.

    ``username``/``password`` are set for the auth-protected variants; ``issuer`` is the
    token server of the token variant (its ``.requests`` log what it was asked).
    """

    host: str
    process: subprocess.Popen[bytes]
    root: Path
    username: str | None = None
    password: str | None = None
    issuer: Any = None
    scheme: str = "http"
    verify: Any = True  # the pusher's TLS trust (a context for a private CA)
    client_cert: tuple[str, str] | None = None  # the pusher's client certificate

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def ref(self, repo: str, tag: str = "latest") -> Reference:
        """A Reference to ``repo:tag`` in this registry."""
        return Reference.parse(f"{self.host}/{repo}:{tag}")

    def pusher(self) -> Pusher:
        """A Pusher logged in as this registry's user (if it has one)."""
        return Pusher(
            self.url,
            username=self.username,
            password=self.password,
            verify=self.verify,
            client_cert=self.client_cert,
        )

    def push_image(self, repo: str, tag: str, image: Image) -> oci.Descriptor:
        """Push ``image`` as ``repo:tag``; return its manifest descriptor."""
        with self.pusher() as pusher:
            return pusher.push_image(repo, tag, image)

    def push_index(self, repo: str, tag: str, index: ImageIndex) -> oci.Descriptor:
        """Push every image of ``index``, then the index as ``repo:tag``; return its descriptor."""
        with self.pusher() as pusher:
            return pusher.push_index(repo, tag, index)


@contextmanager
def run_registry(
    root: Path,
    auth: Mapping[str, Any] | None = None,
    tls: TlsFiles | None = None,
    client_ca: Path | None = None,
) -> Iterator[RegistryProcess]:
    """Start a registry storing under ``root`` (with ``auth`` config, if any; speaking
    HTTPS with ``tls``' certificate, if given; demanding a client certificate signed by
    ``client_ca``, if given); stop it after."""
    if not REGISTRY_BIN.exists():
        raise RuntimeError(f"{REGISTRY_BIN} missing: apt-get install docker-registry")
    root.mkdir(parents=True, exist_ok=True)
    for _ in range(3):  # a free port may be taken between probing and binding
        port = free_port()
        config = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(root / "data")},
                "delete": {"enabled": True},
            },
            "http": {
                "addr": f"127.0.0.1:{port}",
                "secret": "fsnap-tests",
                **({"tls": _tls_config(tls, client_ca)} if tls else {}),
            },
            **({"auth": dict(auth)} if auth else {}),
        }
        config_path = root / "config.yml"
        config_path.write_text(json.dumps(config))  # JSON is valid YAML
        with open(root / "registry.log", "ab") as log:
            process = subprocess.Popen(
                [str(REGISTRY_BIN), "serve", str(config_path)], stdout=log, stderr=log
            )
        try:
            scheme = "https" if tls else "http"
            verify = ssl.create_default_context(cafile=str(tls.ca)) if tls else True
            if client_ca is not None:  # the probe must not be refused for lack of one
                assert tls is not None
                assert tls.ca_key is not None
                from support.tls import make_client_cert

                cert = make_client_cert(tls, root / "probe-client")
                assert isinstance(verify, ssl.SSLContext)
                verify.load_cert_chain(*cert)
            if _wait_until_serving(process, f"{scheme}://127.0.0.1:{port}/v2/", verify):
                yield RegistryProcess(
                    f"127.0.0.1:{port}", process, root, scheme=scheme, verify=verify
                )
                return
        finally:
            stop(process)
    log_text = (root / "registry.log").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"docker-registry did not start:\n{log_text}")


def _tls_config(tls: TlsFiles, client_ca: Path | None) -> dict[str, Any]:
    config: dict[str, Any] = {"certificate": str(tls.cert), "key": str(tls.key)}
    if client_ca is not None:
        config["clientcas"] = [str(client_ca)]
    return config


def _wait_until_serving(
    process: subprocess.Popen[bytes], url: str, verify: ssl.SSLContext | bool
) -> bool:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            if httpx.get(url, timeout=1.0, verify=verify).status_code in (200, 401):
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    return False


@dataclass
class Pusher:
    """Uploads to a registry over plain HTTP with the distribution API."""

    base_url: str
    username: str | None = None
    password: str | None = None
    verify: Any = True
    client_cert: tuple[str, str] | None = None
    _http: httpx.Client = field(init=False)
    _tokens: dict[str, str] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        verify = self.verify
        if self.client_cert is not None:
            verify = ssl.create_default_context(cafile=None) if verify is True else verify
            verify.load_cert_chain(*self.client_cert)
        self._http = httpx.Client(base_url=self.base_url, timeout=30.0, verify=verify)

    def __enter__(self) -> Pusher:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def push_blob(self, repo: str, blob: Blob) -> None:
        """Monolithic upload: POST opens a session, PUT with ``?digest=`` sends all bytes."""
        started = self._request(repo, "POST", f"/v2/{repo}/blobs/uploads/")
        _expect(started, 202, f"start upload of {blob.digest}")
        location = httpx.URL(self.base_url).join(started.headers["location"])
        location = location.copy_merge_params({"digest": blob.digest})
        headers = {"Content-Type": "application/octet-stream"}
        done = self._request(repo, "PUT", str(location), content=blob.data, headers=headers)
        _expect(done, 201, f"upload of {blob.digest}")

    def push_manifest(self, repo: str, reference: str, manifest: Blob) -> None:
        headers = {"Content-Type": manifest.media_type}
        path = f"/v2/{repo}/manifests/{reference}"
        response = self._request(repo, "PUT", path, content=manifest.data, headers=headers)
        _expect(response, 201, f"manifest {repo}:{reference}")

    def push_image(self, repo: str, tag: str, image: Image) -> oci.Descriptor:
        for blob in image.blobs:
            self.push_blob(repo, blob)
        self.push_manifest(repo, tag, image.manifest)
        return image.manifest.descriptor()

    def push_index(self, repo: str, tag: str, index: ImageIndex) -> oci.Descriptor:
        for image in index.images:
            for blob in image.blobs:
                self.push_blob(repo, blob)
            self.push_manifest(repo, image.manifest.digest, image.manifest)
        self.push_manifest(repo, tag, index.index)
        return index.index.descriptor()

    def _request(self, repo: str, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Send, answering one 401 challenge (Basic or Bearer with push scope)."""
        scope = f"repository:{repo}:pull,push"
        headers = dict(kwargs.pop("headers", {}))
        for _ in range(2):
            if scope in self._tokens:
                headers["Authorization"] = self._tokens[scope]
            response = self._http.request(method, url, headers=headers, **kwargs)
            if response.status_code != 401:
                return response
            self._tokens[scope] = self._authorize(response, scope)
        return response

    def _authorize(self, response: httpx.Response, scope: str) -> str:
        challenge = response.headers.get("www-authenticate", "")
        basic = httpx.BasicAuth(self.username or "", self.password or "")
        if challenge.lower().startswith("basic"):
            return str(next(basic.auth_flow(httpx.Request("GET", "/"))).headers["authorization"])
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        auth = basic if self.username else None
        query = {"service": params.get("service", ""), "scope": scope}
        token = httpx.get(params["realm"], params=query, auth=auth, timeout=10.0)
        _expect(token, 200, "push token")
        return f"Bearer {token.json()['token']}"


def _expect(response: httpx.Response, status: int, what: str) -> None:
    if response.status_code != status:
        raise AssertionError(f"{what}: HTTP {response.status_code}: {response.text[:500]}")
