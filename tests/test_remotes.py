"""RegistryClient against a real registry (distribution 2.8), with faults from a proxy."""

from __future__ import annotations

import base64
import email.utils
import json
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
from fault_server import FaultServer
from image_builder import Format
from support.registry import (
    RegistryProcess,
    busybox_image,
    free_port,
    two_platform_index,
)
from support.remotes import FAST, read_blob, ref_at, run, small_image

from fsnap import oci
from fsnap.digest import sha256_of
from fsnap.errors import (
    DigestMismatch,
    InvalidArgument,
    NotFound,
    RegistryError,
    Unauthorized,
    Unavailable,
    Unsupported,
)
from fsnap.remotes import Credentials, RegistryClient
from fsnap.remotes.registry import is_local_host
from fsnap.remotes.retry import MAX_RETRY_AFTER, parse_retry_after
from fsnap.remotes.transport import DeferredTLS, client_transport

# -- resolve and fetch ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["oci", "docker"])
def test_resolve_and_fetch_image(registry: RegistryProcess, fmt: Format) -> None:
    image = small_image(f"fetch-{fmt}", fmt)
    pushed = registry.push_image(f"remotes/fetch-{fmt}", "v1", image)
    ref = ref_at(registry.host, f"remotes/fetch-{fmt}")

    async def body(client: RegistryClient) -> tuple[oci.Descriptor, bytes, list[bytes]]:
        desc = await client.resolve(ref)
        manifest = await client.fetch_manifest(ref, desc)
        blobs = [await read_blob(client, ref, b.descriptor()) for b in image.blobs]
        return desc, manifest, blobs

    desc, manifest, blobs = run(body)
    assert (desc.media_type, desc.digest, desc.size) == (
        pushed.media_type,
        pushed.digest,
        pushed.size,
    )
    assert manifest == image.manifest.data
    assert blobs == [b.data for b in image.blobs]


PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def test_plain_http_registry_loads_no_ca_bundle(
    registry: RegistryProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registry over plain HTTP needs no TLS context: httpx made one with every client,
    loading the CA bundle (~30 ms of CPU before each pull's first request)."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    loaded: list[object] = []
    real = ssl.SSLContext.load_verify_locations

    def counted(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
        loaded.append(args or kwargs)
        real(self, *args, **kwargs)

    image = small_image("no-tls")
    registry.push_image("remotes/no-tls", "v1", image)
    ref = ref_at(registry.host, "remotes/no-tls")
    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counted)

    async def body(client: RegistryClient) -> bytes:
        desc = await client.resolve(ref)
        return await client.fetch_manifest(ref, desc)

    assert run(body) == image.manifest.data
    assert loaded == []


def test_a_proxy_in_the_environment_keeps_httpx_transport(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """httpx reads proxy variables only for a client without its own transport."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    assert isinstance(client_transport(True), DeferredTLS)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:1")
    assert client_transport(True) is None


@pytest.mark.parametrize("fmt", ["oci", "docker"])
def test_resolve_index_then_platform_manifest(registry: RegistryProcess, fmt: Format) -> None:
    index = two_platform_index(fmt)
    registry.push_index(f"remotes/index-{fmt}", "v1", index)
    ref = ref_at(registry.host, f"remotes/index-{fmt}")

    async def body(client: RegistryClient) -> tuple[oci.Descriptor, bytes, bytes]:
        desc = await client.resolve(ref)
        data = await client.fetch_manifest(ref, desc)
        child = oci.Descriptor.from_json(json.loads(data)["manifests"][1])
        return desc, data, await client.fetch_manifest(ref, child)

    desc, data, child = run(body)
    expected = oci.OCI_INDEX if fmt == "oci" else oci.DOCKER_MANIFEST_LIST
    assert (desc.media_type, desc.digest) == (expected, index.index.digest)
    assert data == index.index.data
    assert child == index.images[1].manifest.data


def test_resolve_by_digest_pins_that_digest(registry: RegistryProcess) -> None:
    image = small_image("by-digest")
    registry.push_image("remotes/by-digest", "v1", image)
    ref = ref_at(registry.host, "remotes/by-digest", image.manifest.digest)
    desc = run(lambda c: c.resolve(ref))
    assert (desc.digest, desc.size) == (image.manifest.digest, image.manifest.size)


def test_fetch_blob_from_offset_sends_range(
    registry: RegistryProcess, fault_server: FaultServer
) -> None:
    image = small_image("offset")
    registry.push_image("remotes/offset", "v1", image)
    ref = ref_at(fault_server.host, "remotes/offset")
    layer = image.layers[0].blob
    data = run(lambda c: read_blob(c, ref, layer.descriptor(), 100))
    assert data == layer.data[100:]
    assert fault_server.seen("GET", "/blobs/")[0].headers.get("range") == "bytes=100-"


def test_offset_honoured_when_server_ignores_range(
    registry: RegistryProcess, fault_server: FaultServer
) -> None:
    image = small_image("no-range")
    registry.push_image("remotes/no-range", "v1", image)
    fault_server.ignore_range = True
    ref = ref_at(fault_server.host, "remotes/no-range")
    layer = image.layers[0].blob
    assert run(lambda c: read_blob(c, ref, layer.descriptor(), 100)) == layer.data[100:]


def test_unknown_tag_repo_and_blob_are_not_found(registry: RegistryProcess) -> None:
    registry.push_image("remotes/known", "v1", small_image("known"))
    missing_tag = ref_at(registry.host, "remotes/known", "nope")
    with pytest.raises(NotFound, match="remotes/known:nope: not found"):
        run(lambda c: c.resolve(missing_tag))
    with pytest.raises(NotFound, match="remotes/never-pushed"):
        run(lambda c: c.resolve(ref_at(registry.host, "remotes/never-pushed")))
    blob = oci.Descriptor(oci.OCI_LAYER, "sha256:" + "0" * 64, 10)
    with pytest.raises(NotFound, match=f"{blob.digest}.*BLOB_UNKNOWN"):
        run(lambda c: read_blob(c, ref_at(registry.host, "remotes/known"), blob))


# -- refusals: schema 1, oversized, not JSON, corrupt, registry errors --------------------


def test_schema1_refused_by_name(fault_server: FaultServer) -> None:
    # distribution 2.8 refuses to store schema 1 manifests, so the proxy serves one.
    body = json.dumps({"schemaVersion": 1, "name": "remotes/old", "tag": "v1"}).encode()
    digest = "sha256:" + "1" * 64
    fault_server.serve_manifest("remotes/old", "v1", oci.DOCKER_SCHEMA1_SIGNED, body, digest)
    fault_server.serve_manifest("remotes/old", "json", "application/json", body, digest)
    for tag in ("v1", "json"):
        ref = ref_at(fault_server.host, "remotes/old", tag)
        with pytest.raises(Unsupported, match="schema 1"):
            run(lambda c: c.resolve(ref))  # noqa: B023 (run() completes inside the loop)


def test_oversized_manifest_refused(fault_server: FaultServer) -> None:
    huge = b"{" + b" " * oci.MAX_MANIFEST_SIZE + b"}"
    digest = "sha256:" + "2" * 64
    fault_server.serve_manifest("remotes/huge", "v1", oci.OCI_MANIFEST, huge, digest)
    fault_server.serve_manifest("remotes/huge", digest, oci.OCI_MANIFEST, huge, digest)
    ref = ref_at(fault_server.host, "remotes/huge")
    with pytest.raises(InvalidArgument, match="manifest too large"):
        run(lambda c: c.resolve(ref))
    lying = oci.Descriptor(oci.OCI_MANIFEST, digest, 100)
    with pytest.raises(InvalidArgument, match="manifest too large"):
        run(lambda c: c.fetch_manifest(ref, lying))
    declared = oci.Descriptor(oci.OCI_MANIFEST, digest, oci.MAX_MANIFEST_SIZE + 1)
    with pytest.raises(InvalidArgument, match="manifest too large"):
        run(lambda c: c.fetch_manifest(ref, declared))
    assert len(fault_server.seen("GET", digest)) == 1  # the declared-too-large one never asked


def test_non_json_manifest_refused(fault_server: FaultServer) -> None:
    body = b"<html>not a manifest</html>"
    digest = sha256_of(body)
    fault_server.serve_manifest("remotes/html", "v1", "text/html", body)
    fault_server.serve_manifest("remotes/html", digest, oci.OCI_MANIFEST, body, digest)
    ref = ref_at(fault_server.host, "remotes/html")
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        run(lambda c: c.resolve(ref))
    desc = oci.Descriptor(oci.OCI_MANIFEST, digest, len(body))
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        run(lambda c: c.fetch_manifest(ref, desc))


def test_manifest_digest_mismatch_named(
    registry: RegistryProcess, fault_server: FaultServer
) -> None:
    image = small_image("mismatch")
    registry.push_image("remotes/mismatch", "v1", image)
    real = image.manifest.descriptor()
    forged = image.manifest.data.replace(b'"schemaVersion": 2', b'"schemaVersion":  2')
    fault_server.serve_manifest("remotes/mismatch", real.digest, real.media_type, forged)
    ref = ref_at(fault_server.host, "remotes/mismatch")
    with pytest.raises(DigestMismatch, match=real.digest):
        run(lambda c: c.fetch_manifest(ref, real))


def test_registry_error_message_reported(fault_server: FaultServer) -> None:
    fault_server.fail(times=2, status=400, match="/manifests/")
    with pytest.raises(RegistryError, match="HTTP 400: INJECTED: injected HTTP 400"):
        run(lambda c: c.resolve(ref_at(fault_server.host, "remotes/any")))


# -- auth ----------------------------------------------------------------------------------


def test_basic_auth(basic_registry: RegistryProcess) -> None:
    image = small_image("basic")
    basic_registry.push_image("remotes/basic", "v1", image)
    ref = ref_at(basic_registry.host, "remotes/basic")
    good = Credentials("alice", "wonderland")
    assert run(lambda c: c.resolve(ref), credentials=good).digest == image.manifest.digest
    empty = Path("/nonexistent/config.json")
    with pytest.raises(Unauthorized, match=r"'alice'.*wrong username or password"):
        run(lambda c: c.resolve(ref), credentials=Credentials("alice", "nope"))
    with pytest.raises(Unauthorized, match="requires"):
        run(lambda c: c.resolve(ref), docker_config=empty)


@pytest.mark.parametrize("form", ["auth", "username"])
def test_credentials_from_docker_config(
    basic_registry: RegistryProcess, docker_config: Path, form: str
) -> None:
    image = small_image(f"config-{form}")
    basic_registry.push_image(f"remotes/config-{form}", "v1", image)
    if form == "auth":
        entry = {"auth": base64.b64encode(b"alice:wonderland").decode()}
    else:
        entry = {"username": "alice", "password": "wonderland"}
    docker_config.parent.mkdir(parents=True)
    auths = {"other.example": {"auth": "eDp5"}, f"http://{basic_registry.host}/v1/": entry}
    docker_config.write_text(json.dumps({"auths": auths}))
    ref = ref_at(basic_registry.host, f"remotes/config-{form}")
    desc = run(lambda c: c.resolve(ref), docker_config=docker_config)
    assert desc.digest == image.manifest.digest


def test_bearer_anonymous_caches_token(token_registry: RegistryProcess) -> None:
    image = small_image("bearer-anon")
    token_registry.push_image("remotes/bearer-anon", "v1", image)
    ref = ref_at(token_registry.host, "remotes/bearer-anon")
    asked_before = len(token_registry.issuer.requests)

    async def body(client: RegistryClient) -> bytes:
        desc = await client.resolve(ref)
        await client.fetch_manifest(ref, desc)
        return await read_blob(client, ref, image.layers[0].blob.descriptor())

    data = run(body, docker_config=Path("/nonexistent/config.json"))
    assert data == image.layers[0].blob.data
    asked = token_registry.issuer.requests[asked_before:]
    assert [(r.user, r.scopes) for r in asked] == [(None, ("repository:remotes/bearer-anon:pull",))]


def test_bearer_with_credentials(token_registry: RegistryProcess) -> None:
    image = small_image("bearer-private")
    token_registry.push_image("private/bearer", "v1", image)
    ref = ref_at(token_registry.host, "private/bearer")
    asked_before = len(token_registry.issuer.requests)
    good = Credentials("alice", "wonderland")
    assert run(lambda c: c.resolve(ref), credentials=good).digest == image.manifest.digest
    assert token_registry.issuer.requests[asked_before].user == "alice"
    with pytest.raises(Unauthorized, match="requires authentication"):
        run(lambda c: c.resolve(ref), docker_config=Path("/nonexistent/config.json"))
    with pytest.raises(Unauthorized, match="refused credentials of user 'alice'"):
        run(lambda c: c.resolve(ref), credentials=Credentials("alice", "wrong"))


def test_expired_bearer_token_fetched_again(token_registry: RegistryProcess) -> None:
    image = small_image("bearer-expired")
    token_registry.push_image("remotes/bearer-expired", "v1", image)
    ref = ref_at(token_registry.host, "remotes/bearer-expired")
    asked_before = len(token_registry.issuer.requests)

    async def body(client: RegistryClient) -> bytes:
        desc = await client.resolve(ref)
        # Simulate expiry: the cached token is one the registry no longer accepts.
        (auth,) = client._auth.values()  # (one host: the registry)
        auth._tokens = {scope: "Bearer expired" for scope in auth._tokens}
        return await client.fetch_manifest(ref, desc)

    assert run(body, docker_config=Path("/nonexistent/config.json")) == image.manifest.data
    assert len(token_registry.issuer.requests) - asked_before == 2


# -- faults and retries --------------------------------------------------------------------


def test_dropped_connection_resumes_with_range(
    registry: RegistryProcess, fault_server: FaultServer
) -> None:
    image = busybox_image()
    registry.push_image("remotes/drop", "v1", image)
    layer = image.layers[0].blob
    fault_server.drop_blob_after(300_000)
    ref = ref_at(fault_server.host, "remotes/drop")

    async def body(client: RegistryClient) -> bytes:
        return await read_blob(client, ref, layer.descriptor())

    client_args: dict[str, Any] = dict(FAST)
    data = run(body, **client_args)
    assert data == layer.data
    gets = fault_server.seen("GET", layer.digest)
    assert [g.headers.get("range") for g in gets] == [None, "bytes=300000-"]


def test_429_retry_after_honoured(registry: RegistryProcess, fault_server: FaultServer) -> None:
    image = small_image("throttled")
    registry.push_image("remotes/throttled", "v1", image)
    fault_server.throttle(times=1, retry_after="1", match="/manifests/")
    ref = ref_at(fault_server.host, "remotes/throttled")
    retries: list[Any] = []

    async def body(client: RegistryClient) -> oci.Descriptor:
        desc = await client.resolve(ref)
        retries.extend(client.retries)
        return desc

    assert run(body, **FAST) == image.manifest.descriptor()  # size from HEAD via the proxy
    assert [(r.delay, "429" in r.reason) for r in retries] == [(1.0, True)]
    assert len(fault_server.seen("HEAD", "/manifests/")) == 2


def test_5xx_retried_then_success(registry: RegistryProcess, fault_server: FaultServer) -> None:
    image = small_image("flaky")
    registry.push_image("remotes/flaky", "v1", image)
    layer = image.layers[0].blob
    fault_server.fail(times=3, status=503, match="/blobs/")
    ref = ref_at(fault_server.host, "remotes/flaky")
    assert run(lambda c: read_blob(c, ref, layer.descriptor()), **FAST) == layer.data
    assert len(fault_server.seen("GET", layer.digest)) == 4


def test_retries_exhausted_is_unavailable(
    registry: RegistryProcess, fault_server: FaultServer
) -> None:
    fault_server.fail(times=10, status=502, match="/manifests/")
    ref = ref_at(fault_server.host, "remotes/down")
    with pytest.raises(Unavailable, match="giving up after 3 attempts: HTTP 502"):
        run(lambda c: c.resolve(ref), max_retries=2, **FAST)
    closed = ref_at(f"127.0.0.1:{free_port()}", "remotes/nothing")
    # Said as skopeo and ctr say it, not as the socket library does ("all attempts to
    # connect to ... failed").
    with pytest.raises(Unavailable, match=f"connection refused by {closed.domain}$"):
        run(lambda c: c.resolve(closed), max_retries=1, **FAST)


def test_blob_redirect_followed(registry: RegistryProcess, fault_server: FaultServer) -> None:
    image = small_image("redirect")
    registry.push_image("remotes/redirect", "v1", image)
    layer = image.layers[0].blob
    fault_server.redirect_blobs = True
    ref = ref_at(fault_server.host, "remotes/redirect")
    assert run(lambda c: read_blob(c, ref, layer.descriptor())) == layer.data
    assert fault_server.seen("GET", f"/_objects/v2/remotes/redirect/blobs/{layer.digest}")


def test_corrupt_blob_passed_through_for_the_writer_to_catch(
    registry: RegistryProcess, fault_server: FaultServer
) -> None:
    # fetch_blob does not verify: the content writer does. The bytes must still differ.
    image = small_image("corrupt")
    registry.push_image("remotes/corrupt", "v1", image)
    layer = image.layers[0].blob
    fault_server.corrupt_blob()
    ref = ref_at(fault_server.host, "remotes/corrupt")
    data = run(lambda c: read_blob(c, ref, layer.descriptor()))
    assert len(data) == layer.size
    assert data != layer.data


def test_retry_after_forms() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("100000") == MAX_RETRY_AFTER
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    later = email.utils.formatdate(time.time() + 3600, usegmt=True)
    assert parse_retry_after(later) == MAX_RETRY_AFTER
    assert parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT") == 0.0


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("127.0.0.1:5000", True),
        ("127.1.2.3", True),
        ("[::1]:5000", True),
        ("registry.example:5000", False),
        ("10.0.0.1:5000", False),
        ("docker.io", False),
    ],
)
def test_plain_http_default_only_for_loopback(host: str, local: bool) -> None:
    assert is_local_host(host) is local
