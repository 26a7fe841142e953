"""A small token server for distribution's ``auth: token`` mode, run in a thread by tests.

It signs RS256 JWTs with a key whose self-signed certificate the registry trusts
(``rootcertbundle``); the ``x5c`` header carries that certificate so the registry can find
the key. Policy: wrong Basic credentials get 401; anonymous callers get ``pull`` on every
repository except those under ``private/``; the known user gets what was asked.
"""

from __future__ import annotations

import base64
import datetime
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from support.http import serving

SERVICE = "fsnap-test-registry"
ISSUER = "fsnap-test-issuer"


@dataclass(frozen=True)
class TokenRequest:
    """What the issuer was asked: by whom (None: anonymous), for which scopes."""

    user: str | None
    scopes: tuple[str, ...]
    service: str


@dataclass
class TokenIssuer:
    """Signing key, its certificate, the accepted user, and a log of requests."""

    username: str
    password: str
    key: rsa.RSAPrivateKey = field(repr=False)
    cert: x509.Certificate = field(repr=False)
    url: str = ""
    requests: list[TokenRequest] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def write_cert(self, path: Path) -> Path:
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return path

    def registry_auth(self, bundle: Path) -> dict[str, dict[str, str]]:
        """The registry's ``auth:`` section trusting this issuer."""
        return {
            "token": {
                "realm": f"{self.url}/token",
                "service": SERVICE,
                "issuer": ISSUER,
                "rootcertbundle": str(self.write_cert(bundle)),
            }
        }

    def grant(self, user: str | None, scope: str) -> dict[str, object] | None:
        parts = scope.split(":")
        if len(parts) != 3 or parts[0] != "repository":
            return None
        _, name, actions = parts
        wanted = [a for a in actions.split(",") if a]
        if user is None:
            wanted = [] if name.startswith("private/") else [a for a in wanted if a == "pull"]
        return {"type": "repository", "name": name, "actions": wanted}

    def token(self, user: str | None, scopes: list[str]) -> str:
        now = int(time.time())
        access = [g for g in (self.grant(user, s) for s in scopes) if g is not None]
        claims = {
            "iss": ISSUER,
            "sub": user or "",
            "aud": SERVICE,
            "exp": now + 300,
            "nbf": now - 60,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        der = self.cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        signing_input = f"{_b64(json.dumps(header))}.{_b64(json.dumps(claims))}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64(signature)}"

    def log(self, request: TokenRequest) -> None:
        with self._lock:
            self.requests.append(request)


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def make_issuer(username: str, password: str) -> TokenIssuer:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fsnap test token issuer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return TokenIssuer(username, password, key, cert)


class _Handler(BaseHTTPRequestHandler):
    server: _IssuerServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        issuer = self.server.issuer
        query = parse_qs(urlsplit(self.path).query)
        valid, user = self._user()
        scopes = query.get("scope", [])
        service = query.get("service", [""])[0]
        issuer.log(TokenRequest(user if valid else "<wrong credentials>", tuple(scopes), service))
        if not valid:
            self._reply(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]})
            return
        self._reply(200, {"token": issuer.token(user, scopes), "expires_in": 300})

    def _user(self) -> tuple[bool, str | None]:
        """(credentials valid, user name); anonymous is (True, None)."""
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return True, None
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False, None
        issuer = self.server.issuer
        return (user, password) == (issuer.username, issuer.password), user

    def _reply(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        del format, args


class _IssuerServer(ThreadingHTTPServer):
    daemon_threads = True
    issuer: TokenIssuer


@contextmanager
def run_issuer(username: str, password: str) -> Iterator[TokenIssuer]:
    """Serve a fresh issuer on a free loopback port until the block ends."""
    issuer = make_issuer(username, password)
    server = _IssuerServer(("127.0.0.1", 0), _Handler)
    server.issuer = issuer
    with serving(server, "token-issuer") as port:
        issuer.url = f"http://127.0.0.1:{port}"
        yield issuer
