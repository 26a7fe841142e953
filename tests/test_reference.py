"""Reference parsing: Docker's normalisation table and the errors users see for bad input."""

from __future__ import annotations

import pytest

from fsnap.errors import InvalidArgument
from fsnap.reference import Reference

# No mount, no registry: these tests take seconds, so a minute means a hang.
pytestmark = pytest.mark.timeout(60)

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "full", "domain", "path", "tag", "digest"),
    [
        (
            "busybox",
            "docker.io/library/busybox:latest",
            "docker.io",
            "library/busybox",
            "latest",
            "",
        ),
        (
            "busybox:1.36",
            "docker.io/library/busybox:1.36",
            "docker.io",
            "library/busybox",
            "1.36",
            "",
        ),
        ("user/app", "docker.io/user/app:latest", "docker.io", "user/app", "latest", ""),
        (
            "docker.io/busybox",
            "docker.io/library/busybox:latest",
            "docker.io",
            "library/busybox",
            "latest",
            "",
        ),
        (
            "index.docker.io/busybox",
            "docker.io/library/busybox:latest",
            "docker.io",
            "library/busybox",
            "latest",
            "",
        ),
        ("localhost/app", "localhost/app:latest", "localhost", "app", "latest", ""),
        ("localhost:5000/a/b:v1", "localhost:5000/a/b:v1", "localhost:5000", "a/b", "v1", ""),
        ("127.0.0.1:5000/app:x", "127.0.0.1:5000/app:x", "127.0.0.1:5000", "app", "x", ""),
        ("quay.io/org/img", "quay.io/org/img:latest", "quay.io", "org/img", "latest", ""),
        ("registry:5000/app", "registry:5000/app:latest", "registry:5000", "app", "latest", ""),
        ("[::1]:5000/app", "[::1]:5000/app:latest", "[::1]:5000", "app", "latest", ""),
        (
            f"busybox@{DIGEST}",
            f"docker.io/library/busybox@{DIGEST}",
            "docker.io",
            "library/busybox",
            "",
            DIGEST,
        ),
        (
            f"host.example/a:t@{DIGEST}",
            f"host.example/a:t@{DIGEST}",
            "host.example",
            "a",
            "t",
            DIGEST,
        ),
        (
            "a/b__c.d-e/f",
            "docker.io/a/b__c.d-e/f:latest",
            "docker.io",
            "a/b__c.d-e/f",
            "latest",
            "",
        ),
        (
            "localhost:5000",
            "docker.io/library/localhost:5000",
            "docker.io",
            "library/localhost",
            "5000",
            "",
        ),
    ],
)
def test_parse_normalises(
    text: str, full: str, domain: str, path: str, tag: str, digest: str
) -> None:
    ref = Reference.parse(text)
    assert (ref.domain, ref.path, ref.tag, ref.digest) == (domain, path, tag, digest)
    assert str(ref) == full
    assert ref.name == f"{domain}/{path}"
    assert ref.repository == path
    assert ref.object == (digest or tag)
    assert Reference.parse(str(ref)) == ref


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("Busybox", "lowercase"),
        ("host.io/Repo", "lowercase"),
        ("busybox:", "empty tag"),
        ("busybox:bad!tag", "bad tag"),
        ("busybox:-x", "bad tag"),
        ("busybox:" + "t" * 129, "bad tag"),
        ("busybox@", "empty digest"),
        ("busybox@sha256:1234", "bad digest"),
        ("busybox@md5:" + "a" * 32, "bad digest"),
        (f"busybox@sha256:{'AB' * 32}", "bad digest"),
        ("host.io/", "empty repository"),
        ("a//b", "empty path component"),
        ("a/-b", "bad repository component"),
        ("a/b_", "bad repository component"),
        ("bad_host.io/a", "bad registry host"),
        ("http://host.io:5000/a:1", r"leave out 'http://' \(host.io:5000/a:1\); .* --plain-http"),
        ("docker://busybox", r"leave out 'docker://' \(busybox\)$"),
        (" busybox", "whitespace"),
        ("bu sybox", "whitespace"),
        ("a/" + "b" * 260, "longer than"),
    ],
)
def test_parse_rejects(text: str, why: str) -> None:
    with pytest.raises(InvalidArgument, match=why):
        Reference.parse(text)


def test_with_digest_pins_and_validates() -> None:
    ref = Reference.parse("localhost:5000/app:v1").with_digest(DIGEST)
    assert str(ref) == f"localhost:5000/app:v1@{DIGEST}"
    assert ref.object == DIGEST
    with pytest.raises(InvalidArgument):
        ref.with_digest("sha256:nope")
