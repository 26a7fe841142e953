"""Credentials go only to the registry (issue 9): redirects, upload Locations, token realms,
the token cache's keys, and bounds on what a challenge may make us parse.

A second loopback address (127.0.0.2) plays the foreign host: a FaultServer bound there
stands for object storage or a hostile server. It reaches the registry with its own
credentials when it proxies (as a pre-signed URL would), so any Authorization header the
client sends it is a leak, and the tests assert there is none.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fault_server import FaultServer, run_fault_server
from support.registry import RegistryProcess, run_registry
from support.remotes import FAST, read_blob, ref_at, run, small_image
from support.tls import TlsFiles, make_tls
from token_issuer import TokenIssuer

from fsnap.client import Client
from fsnap.errors import NotFound, RegistryError, Unauthorized
from fsnap.remotes import Credentials, RegistryClient
from fsnap.remotes.auth import Challenge, parse_challenge
from fsnap.remotes.origin import MAX_REDIRECTS

FOREIGN = "127.0.0.2"
ALICE = Credentials("alice", "wonderland")
NO_CONFIG = Path("/nonexistent/config.json")
# The documented bounds (remotes/auth.py), as numbers: a test that imported them would
# follow a change of them.
MAX_CHALLENGE_BYTES = 4096
MAX_CHALLENGE_PARAMS = 16
MAX_TOKEN_RESPONSE = 1 << 20


@pytest.fixture
def front(basic_registry: RegistryProcess) -> Iterator[FaultServer]:
    """A proxy on 127.0.0.1 in front of the Basic-auth registry: the registry's origin."""
    with run_fault_server(basic_registry.host) as server:
        yield server


@pytest.fixture
def foreign(basic_registry: RegistryProcess) -> Iterator[FaultServer]:
    """Another host (127.0.0.2) with its own way into the registry (a pre-signed URL)."""
    with run_fault_server(basic_registry.host, bind=FOREIGN) as server:
        server.upstream_authorization = ALICE.basic_header()
        yield server


def authorized(server: FaultServer) -> list[str]:
    """Paths of requests that reached ``server`` carrying an Authorization header."""
    return [r.path for r in server.seen() if "authorization" in r.headers]


# -- redirects and upload Locations on other hosts ---------------------------------------


def test_blob_redirect_to_other_host_works_without_credentials(
    basic_registry: RegistryProcess, front: FaultServer, foreign: FaultServer
) -> None:
    image = small_image("s3-style")
    basic_registry.push_image("origins/s3-style", "v1", image)
    front.redirect_blobs = True
    front.redirect_blobs_to = foreign.url
    ref = ref_at(front.host, "origins/s3-style")
    layer = image.layers[0].blob

    async def body(client: RegistryClient) -> bytes:
        await client.resolve(ref)  # logs in (Basic) with the registry first
        return await read_blob(client, ref, layer.descriptor())

    assert run(body, credentials=ALICE) == layer.data
    assert front.seen("GET", layer.digest)[-1].headers.get("authorization")
    assert foreign.seen("GET", f"/_objects/v2/origins/s3-style/blobs/{layer.digest}")
    assert authorized(foreign) == []


def test_redirected_401_with_own_realm_gets_no_credentials(
    basic_registry: RegistryProcess, front: FaultServer, foreign: FaultServer
) -> None:
    image = small_image("evil-realm")
    basic_registry.push_image("origins/evil-realm", "v1", image)
    front.redirect_blobs = True
    front.redirect_blobs_to = foreign.url
    foreign.challenge(f'Bearer realm="{foreign.url}/token",service="evil"', 10, "/_objects/")
    foreign.serve("/token", "application/json", b'{"token": "evil-token"}')
    ref = ref_at(front.host, "origins/evil-realm")
    layer = image.layers[0].blob

    async def body(client: RegistryClient) -> bytes:
        await client.resolve(ref)
        return await read_blob(client, ref, layer.descriptor())

    with pytest.raises(Unauthorized, match=rf"http://{FOREIGN}:\d+ asked for credentials"):
        run(body, credentials=ALICE)
    assert foreign.seen("GET", "/token") == []
    assert authorized(foreign) == []
    sent_to_registry = [r.headers.get("authorization", "") for r in front.seen()]
    assert not [h for h in sent_to_registry if "evil-token" in h]


def test_push_to_upload_location_on_other_host_sends_no_credentials(
    tmp_path: Path, basic_registry: RegistryProcess, front: FaultServer, foreign: FaultServer
) -> None:
    image = small_image("upload-elsewhere")
    basic_registry.push_image("origins/upload-src", "v1", image)
    front.location_base = foreign.url
    foreign.location_base = foreign.url
    with Client(tmp_path / "root") as client:
        source = f"{basic_registry.host}/origins/upload-src:v1"
        client.pull(source, credentials=ALICE, unpack=False)
        target = f"{front.host}/origins/upload-dest:v1"
        client.push(source, target, credentials=ALICE)
    assert foreign.seen("PUT", "/blobs/uploads/")  # the blobs really went up there
    assert front.seen("POST", "/blobs/uploads/")[-1].headers.get("authorization")
    assert authorized(foreign) == []
    dest = ref_at(basic_registry.host, "origins/upload-dest")
    assert run(lambda c: c.resolve(dest), credentials=ALICE).digest == image.manifest.digest


def test_401_at_upload_location_on_other_host_is_refused(
    tmp_path: Path, basic_registry: RegistryProcess, front: FaultServer, foreign: FaultServer
) -> None:
    image = small_image("upload-401")
    basic_registry.push_image("origins/upload-401", "v1", image)
    front.location_base = foreign.url
    foreign.challenge('Basic realm="elsewhere"', 10, "/blobs/uploads/")
    with Client(tmp_path / "root") as client:
        source = f"{basic_registry.host}/origins/upload-401:v1"
        client.pull(source, credentials=ALICE, unpack=False)
        with pytest.raises(Unauthorized, match="is not the registry"):
            client.push(
                source,
                f"{front.host}/origins/upload-401-dest:v1",
                credentials=ALICE,
            )
    assert authorized(foreign) == []


# -- token realms --------------------------------------------------------------------------


def test_token_request_redirected_elsewhere_loses_credentials(
    registry: RegistryProcess, fault_server: FaultServer
) -> None:
    image = small_image("token-moved")
    registry.push_image("origins/token-moved", "v1", image)
    with run_fault_server(registry.host, bind=FOREIGN) as elsewhere:
        fault_server.challenge(f'Bearer realm="{fault_server.url}/token",service="s"', 1)
        fault_server.redirect(f"{elsewhere.url}/token", 1, "/token")
        elsewhere.serve("/token", "application/json", b'{"token": "from-elsewhere"}')
        ref = ref_at(fault_server.host, "origins/token-moved")
        assert run(lambda c: c.resolve(ref), credentials=ALICE).digest == image.manifest.digest
    assert fault_server.seen("GET", "/token")[0].headers["authorization"] == ALICE.basic_header()
    assert [r.path.split("?")[0] for r in elsewhere.seen()] == ["/token"]
    assert authorized(elsewhere) == []
    last = fault_server.seen("HEAD", "/manifests/")[-1]
    assert last.headers["authorization"] == "Bearer from-elsewhere"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


def test_https_registry_refuses_plain_http_token_realm(
    tmp_path: Path, tls: TlsFiles, token_issuer: TokenIssuer
) -> None:
    auth = token_issuer.registry_auth(tmp_path / "issuer.pem")
    assert auth["token"]["realm"].startswith("http://")
    with run_registry(tmp_path / "registry", auth, tls=tls) as registry:
        ref = ref_at(registry.host, "origins/tls-realm")
        before = len(token_issuer.requests)
        with pytest.raises(RegistryError, match="plain-HTTP token realm"):
            run(lambda c: c.resolve(ref), credentials=ALICE, plain_http=False, ca_file=tls.ca)
        assert token_issuer.requests[before:] == []


def test_https_registry_trusted_through_ca_file(
    tmp_path: Path, tls: TlsFiles, basic_registry: RegistryProcess
) -> None:
    htpasswd = Path(basic_registry.root / "htpasswd")
    auth = {"htpasswd": {"realm": "fsnap-tests", "path": str(htpasswd)}}
    with run_registry(tmp_path / "registry", auth, tls=tls) as registry:
        ref = ref_at(registry.host, "origins/never-pushed")
        https = {"plain_http": False, "credentials": ALICE, **FAST}
        with pytest.raises(NotFound):  # TLS and login worked: the registry says "unknown"
            run(lambda c: c.resolve(ref), ca_file=tls.ca, **https)
        with pytest.raises(RegistryError, match="TLS certificate verification failed"):
            run(lambda c: c.resolve(ref), **https)


# -- the token cache -----------------------------------------------------------------------


def test_token_never_reused_for_other_credentials(
    token_registry: RegistryProcess, docker_config: Path
) -> None:
    # Two names of one registry share its realm and service; only one has credentials.
    image = small_image("token-owner")
    token_registry.push_image("private/token-owner", "v1", image)
    port = token_registry.host.rsplit(":", 1)[1]
    docker_config.parent.mkdir(parents=True)
    entry = {"username": "alice", "password": "wonderland"}
    docker_config.write_text(json.dumps({"auths": {token_registry.host: entry}}))
    as_alice = ref_at(token_registry.host, "private/token-owner")
    anonymous = ref_at(f"localhost:{port}", "private/token-owner")

    async def body(client: RegistryClient) -> None:
        assert (await client.resolve(as_alice)).digest == image.manifest.digest
        await client.resolve(anonymous)

    with pytest.raises(Unauthorized, match="requires authentication"):
        run(body, docker_config=docker_config)


def test_token_never_reused_for_other_scope(token_registry: RegistryProcess) -> None:
    for name in ("scope-a", "scope-b"):
        token_registry.push_image(f"origins/{name}", "v1", small_image(name))
    first, second = (ref_at(token_registry.host, f"origins/{n}") for n in ("scope-a", "scope-b"))
    before = len(token_registry.issuer.requests)

    async def body(client: RegistryClient) -> None:
        for ref in (first, second, first, second):
            await client.resolve(ref)

    run(body, docker_config=NO_CONFIG)
    asked = [r.scopes for r in token_registry.issuer.requests[before:]]
    assert asked == [("repository:origins/scope-a:pull",), ("repository:origins/scope-b:pull",)]


# -- bounds on challenges, tokens and redirects ---------------------------------------------


# resolve() tries HEAD, then GET: each hostile answer is armed for both (times=2).


def test_oversized_challenges_refused(fault_server: FaultServer) -> None:
    ref = ref_at(fault_server.host, "origins/hostile")
    fault_server.challenge('Bearer realm="http://x/t",a="' + "x" * MAX_CHALLENGE_BYTES + '"', 2)
    with pytest.raises(RegistryError, match=r"WWW-Authenticate header of .* bytes"):
        run(lambda c: c.resolve(ref))
    fault_server.challenge("Bearer " + ",".join(f"p{i}=v" for i in range(40)), 2)
    with pytest.raises(RegistryError, match="40 parameters"):
        run(lambda c: c.resolve(ref))


@pytest.mark.parametrize("realm", ["file:///etc/passwd", "ftp://127.0.0.1/token", "/token"])
def test_token_realm_must_be_http_url(fault_server: FaultServer, realm: str) -> None:
    fault_server.challenge(f'Bearer realm="{realm}"', 2)
    with pytest.raises(RegistryError, match="not an http"):
        run(lambda c: c.resolve(ref_at(fault_server.host, "origins/hostile")))


def test_oversized_token_response_refused(fault_server: FaultServer) -> None:
    fault_server.challenge(f'Bearer realm="{fault_server.url}/token"', 2)
    huge = json.dumps({"token": "t" * MAX_TOKEN_RESPONSE}).encode()
    fault_server.serve("/token", "application/json", huge)
    with pytest.raises(RegistryError, match=f"over {MAX_TOKEN_RESPONSE} bytes"):
        run(lambda c: c.resolve(ref_at(fault_server.host, "origins/hostile")))
    fault_server.challenge(f'Bearer realm="{fault_server.url}/token"', 2)
    fault_server.serve("/token", "application/json", b'{"token": "two\\r\\nwords"}')
    with pytest.raises(RegistryError, match="malformed token"):
        run(lambda c: c.resolve(ref_at(fault_server.host, "origins/hostile")))


def test_redirects_bounded_and_http_only(fault_server: FaultServer) -> None:
    ref = ref_at(fault_server.host, "origins/loop")
    path = "/v2/origins/loop/manifests/v1"
    fault_server.redirect(f"{fault_server.url}{path}", times=2 * (MAX_REDIRECTS + 1))
    with pytest.raises(RegistryError, match=f"more than {MAX_REDIRECTS} redirects"):
        run(lambda c: c.resolve(ref))
    assert len(fault_server.seen("HEAD", path)) == MAX_REDIRECTS + 1
    fault_server.faults.clear()
    fault_server.redirect("file:///etc/passwd", 2)
    with pytest.raises(RegistryError, match="only http and https"):
        run(lambda c: c.resolve(ref))


# -- challenges and token answers, at and past every limit ----------------------------------


def test_challenge_parameters_are_case_insensitive_and_quotes_unescaped() -> None:
    found = parse_challenge(
        ' BEARER Realm="https://auth.example/token",SERVICE="a \\"quoted\\" \\\\ name",'
        "scope=repository:x:pull ",
        "registry r",
    )
    assert found == Challenge(
        "bearer",
        {
            "realm": "https://auth.example/token",
            "service": 'a "quoted" \\ name',
            "scope": "repository:x:pull",
        },
    )
    assert parse_challenge("   ", "registry r") is None


def padded(size: int) -> str:
    """A Basic challenge of exactly ``size`` characters."""
    head = 'Basic realm="'
    return head + "x" * (size - len(head) - 1) + '"'


def test_challenges_at_their_limits_parse_and_one_more_is_refused() -> None:
    assert parse_challenge(padded(MAX_CHALLENGE_BYTES), "r") is not None
    with pytest.raises(RegistryError, match=f"{MAX_CHALLENGE_BYTES + 1} bytes"):
        parse_challenge(padded(MAX_CHALLENGE_BYTES + 1), "r")
    params = [f"p{i}=v" for i in range(MAX_CHALLENGE_PARAMS)]
    found = parse_challenge("Bearer " + ",".join(params), "r")
    assert found is not None
    assert len(found.params) == MAX_CHALLENGE_PARAMS
    with pytest.raises(RegistryError, match=f"{MAX_CHALLENGE_PARAMS + 1} parameters"):
        parse_challenge("Bearer " + ",".join([*params, "one=more"]), "r")


def token_flow(fault_server: FaultServer, body: bytes | None, header: str = "") -> str:
    """Resolve through ``fault_server`` after a Bearer challenge whose token server is its
    ``/token`` (serving ``body``, if given): the answered request reaches the registry,
    which has no such image. Returns the Authorization header the retry carried."""
    fault_server.challenge(header or f'Bearer realm="{fault_server.url}/token",service="reg"')
    if body is not None:
        fault_server.serve("/token", "application/json", body)
    ref = ref_at(fault_server.host, "origins/answered")
    with pytest.raises(NotFound):
        run(lambda c: c.resolve(ref), docker_config=NO_CONFIG, **FAST)
    retried = fault_server.seen(contains="/manifests/")[1]
    return retried.headers.get("authorization", "")


@pytest.mark.parametrize(
    ("body", "sent"),
    [
        (b'{"access_token": "oauth2"}', "Bearer oauth2"),
        (b'{"token": "first", "access_token": "second"}', "Bearer first"),
    ],
    ids=["access_token", "token-first"],
)
def test_token_answers_accepted(fault_server: FaultServer, body: bytes, sent: str) -> None:
    assert token_flow(fault_server, body) == sent
    (asked,) = fault_server.seen("GET", "/token")
    assert "service=reg" in asked.path
    assert "scope=repository%3Aorigins%2Fanswered%3Apull" in asked.path


def test_a_token_response_of_exactly_the_limit_is_read(fault_server: FaultServer) -> None:
    body = b'{"token": "fits", "pad": "'
    body += b"x" * (MAX_TOKEN_RESPONSE - len(body) - 2) + b'"}'
    assert len(body) == MAX_TOKEN_RESPONSE
    assert token_flow(fault_server, body) == "Bearer fits"


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b'{"token": "' + b"t" * 65537 + b'"}', "malformed token"),
        (b'{"token": ""}', "sent no token"),
        (b'{"token": 5}', "sent no token"),
        (b'["token"]', "sent no token"),
        (b"not json", "sent no token"),
        (b"[" * 100_000, "sent no token"),
        (b'{"token": "fits", "pad": "' + b"x" * (MAX_TOKEN_RESPONSE - 26) + b'"}', "bytes"),
    ],
    ids=["too-long", "empty", "number", "list", "not-json", "too-deep", "one-byte-over"],
)
def test_bad_token_answers_refused(fault_server: FaultServer, body: bytes, error: str) -> None:
    fault_server.challenge(f'Bearer realm="{fault_server.url}/token"', 2)
    fault_server.serve("/token", "application/json", body)
    with pytest.raises(RegistryError, match=error):
        run(lambda c: c.resolve(ref_at(fault_server.host, "origins/bad-token")), **FAST)


@pytest.mark.parametrize(
    ("status", "error", "message"),
    [
        (401, Unauthorized, "refused anonymous access"),
        (403, Unauthorized, "refused anonymous access"),
        (404, RegistryError, "answered HTTP 404"),
    ],
)
def test_token_server_refusals_named(
    fault_server: FaultServer, status: int, error: type[Exception], message: str
) -> None:
    fault_server.challenge(f'Bearer realm="{fault_server.url}/token"', 2)
    fault_server.fail(2, status=status, match="/token")
    with pytest.raises(error, match=message):
        run(
            lambda c: c.resolve(ref_at(fault_server.host, "origins/refused")),
            docker_config=NO_CONFIG,
            **FAST,
        )


@pytest.mark.parametrize(
    ("arm", "error", "message"),
    [
        (lambda s: s.fail(2, status=401), Unauthorized, "without a challenge"),
        (lambda s: s.challenge("Negotiate abc", 2), Unauthorized, "unsupported .*'negotiate'"),
        (lambda s: s.challenge('Basic realm="r"', 2), Unauthorized, "requires a username"),
        (lambda s: s.challenge('Bearer service="s"', 2), Unauthorized, "without a realm"),
        (lambda s: s.challenge('Bearer realm=""', 2), Unauthorized, "without a realm"),
        (lambda s: s.challenge('Bearer realm="http://[::1"', 2), RegistryError, "bad token realm"),
    ],
    ids=["no-challenge", "negotiate", "basic-anonymous", "no-realm", "empty-realm", "bad-url"],
)
def test_unanswerable_challenges_named(
    fault_server: FaultServer,
    arm: Callable[[FaultServer], None],
    error: type[Exception],
    message: str,
) -> None:
    arm(fault_server)
    with pytest.raises(error, match=message):
        run(
            lambda c: c.resolve(ref_at(fault_server.host, "origins/unanswerable")),
            docker_config=NO_CONFIG,
            **FAST,
        )


def test_credentials_never_show_their_password() -> None:
    """Credentials end up in log lines and error messages through repr."""
    assert "wonderland" not in repr(ALICE)
    assert "alice" in repr(ALICE)


def test_a_challenge_is_a_value() -> None:
    found = parse_challenge('Bearer realm="r"', "r")
    assert found is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        found.scheme = "basic"  # type: ignore[misc]


def test_two_names_of_one_registry_share_an_anonymous_token(
    token_registry: RegistryProcess,
) -> None:
    """The same realm, service, scope and (no) credentials: one token serves both names."""
    image = small_image("shared-token")
    token_registry.push_image("origins/shared-token", "v1", image)
    port = token_registry.host.rsplit(":", 1)[1]
    names = (token_registry.host, f"localhost:{port}")
    before = len(token_registry.issuer.requests)

    async def body(client: RegistryClient) -> None:
        for host in names:
            assert (await client.resolve(ref_at(host, "origins/shared-token"))).digest

    run(body, docker_config=NO_CONFIG)
    assert len(token_registry.issuer.requests[before:]) == 1


def test_a_long_bad_realm_is_quoted_to_200_characters(fault_server: FaultServer) -> None:
    realm = "ftp://" + "x" * 400
    fault_server.challenge(f'Bearer realm="{realm}"', 2)
    with pytest.raises(RegistryError) as caught:
        run(lambda c: c.resolve(ref_at(fault_server.host, "origins/long-realm")))
    assert repr(realm[:200]) in str(caught.value)
    assert repr(realm[:201]) not in str(caught.value)


def test_a_long_plain_http_realm_is_quoted_to_200_characters(
    tmp_path: Path, tls: TlsFiles, token_issuer: TokenIssuer
) -> None:
    auth = token_issuer.registry_auth(tmp_path / "issuer.pem")
    realm = auth["token"]["realm"] + "?pad=" + "x" * 400
    auth["token"]["realm"] = realm
    with run_registry(tmp_path / "registry", auth, tls=tls) as registry:
        ref = ref_at(registry.host, "origins/long-tls-realm")
        with pytest.raises(RegistryError, match="plain-HTTP token realm") as caught:
            run(lambda c: c.resolve(ref), credentials=ALICE, plain_http=False, ca_file=tls.ca)
    assert repr(realm[:200]) in str(caught.value)
    assert repr(realm[:201]) not in str(caught.value)
