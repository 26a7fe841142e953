"""Image references (``[domain/]path[:tag][@digest]``) parsed and normalised like Docker does.

Users type ``busybox``; registries, config files and snapshot labels need the full
``docker.io/library/busybox:latest``. Normalising once, here, means every other package
compares references by their canonical string and never re-implements the defaulting rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fsnap import digest as _digest
from fsnap.errors import InvalidArgument

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
MAX_NAME_LENGTH = 255

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(
    rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?$"
)
_PATH_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")


@dataclass(frozen=True)
class Reference:
    """A fully normalised image reference.

    ``tag`` is empty only when a digest pins the image; ``digest`` is empty unless given.
    """

    domain: str
    path: str
    tag: str = ""
    digest: str = ""

    @classmethod
    def parse(cls, text: str) -> Reference:
        """Parse ``text`` with Docker's defaults; InvalidArgument says what is wrong."""
        if not text:
            raise InvalidArgument("invalid reference: empty")
        if text != text.strip() or any(c.isspace() for c in text):
            raise InvalidArgument(f"invalid reference {text!r}: contains whitespace")
        _check_no_scheme(text)
        rest, digest = _split_digest(text)
        rest, tag = _split_tag(text, rest)
        domain, path = _split_domain(rest)
        _check_domain(text, domain)
        _check_path(text, path)
        if len(domain) + 1 + len(path) > MAX_NAME_LENGTH:
            raise InvalidArgument(
                f"invalid reference {text!r}: name longer than {MAX_NAME_LENGTH} characters"
            )
        if not tag and not digest:
            tag = DEFAULT_TAG
        return cls(domain=domain, path=path, tag=tag, digest=digest)

    @property
    def name(self) -> str:
        """``domain/path``: the repository's full name, without tag or digest."""
        return f"{self.domain}/{self.path}"

    @property
    def repository(self) -> str:
        """The repository path as the registry API knows it (``library/busybox``)."""
        return self.path

    @property
    def object(self) -> str:
        """What to ask for under ``/manifests/``: the digest if pinned, else the tag."""
        return self.digest or self.tag

    @property
    def familiar(self) -> str:
        """Docker's short form: ``debian:12`` for ``docker.io/library/debian:12``,
        ``user/app:1`` for ``docker.io/user/app:1``; other registries keep their domain."""
        if self.domain != DEFAULT_DOMAIN:
            name = self.name
        elif self.path.startswith(OFFICIAL_REPO_PREFIX) and self.path.count("/") == 1:
            name = self.path.removeprefix(OFFICIAL_REPO_PREFIX)
        else:
            name = self.path
        out = f"{name}:{self.tag}" if self.tag else name
        return f"{out}@{self.digest}" if self.digest else out

    def with_digest(self, digest: str) -> Reference:
        """The same reference pinned to ``digest`` (the tag is kept for display)."""
        return Reference(self.domain, self.path, self.tag, _digest.validate(digest))

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def _split_digest(text: str) -> tuple[str, str]:
    if "@" not in text:
        return text, ""
    rest, digest = text.split("@", 1)
    if not digest:
        raise InvalidArgument(f"invalid reference {text!r}: empty digest after '@'")
    try:
        _digest.validate(digest)
    except InvalidArgument:
        raise InvalidArgument(
            f"invalid reference {text!r}: bad digest {digest!r} "
            "(expected sha256:<64 lowercase hex digits>)"
        ) from None
    return rest, digest


def _split_tag(text: str, rest: str) -> tuple[str, str]:
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon <= slash:
        return rest, ""
    name, tag = rest[:colon], rest[colon + 1 :]
    if not tag:
        raise InvalidArgument(f"invalid reference {text!r}: empty tag after ':'")
    if not _TAG.match(tag):
        raise InvalidArgument(
            f"invalid reference {text!r}: bad tag {tag!r} (letters, digits, '_', '.', '-'; "
            "must not start with '.' or '-'; at most 128 characters)"
        )
    return name, tag


def _split_domain(name: str) -> tuple[str, str]:
    """Docker's rule: the first component is a domain if it has a dot or port, or is localhost."""
    first, sep, remainder = name.partition("/")
    is_domain = sep and (
        "." in first or ":" in first or first == "localhost" or first.lower() != first
    )
    if is_domain:
        domain, path = first, remainder
    else:
        domain, path = DEFAULT_DOMAIN, name
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and path and "/" not in path:
        path = OFFICIAL_REPO_PREFIX + path
    return domain, path


def _check_domain(text: str, domain: str) -> None:
    if not _DOMAIN.match(domain):
        raise InvalidArgument(f"invalid reference {text!r}: bad registry host {domain!r}")


def _check_path(text: str, path: str) -> None:
    if not path:
        raise InvalidArgument(f"invalid reference {text!r}: empty repository name")
    for component in path.split("/"):
        if not component:
            raise InvalidArgument(f"invalid reference {text!r}: empty path component")
        if component.lower() != component:
            raise InvalidArgument(f"invalid reference {text!r}: repository name must be lowercase")
        if not _PATH_COMPONENT.match(component):
            raise InvalidArgument(
                f"invalid reference {text!r}: bad repository component {component!r} "
                "(lowercase letters and digits, separated by '.', '_', '__' or '-')"
            )


def _check_no_scheme(text: str) -> None:
    """A URL (``http://host/app``) or a skopeo transport (``docker://app``) pasted as a
    reference: say to leave the prefix out (it read as the registry host ``http:``)."""
    scheme, sep, rest = text.partition("://")
    if not sep or not scheme.isascii() or not scheme.replace("-", "").isalnum():
        return
    hint = ""
    if scheme == "http":
        hint = (
            "; localhost and 127.0.0.0/8 are plain HTTP by default, other hosts with --plain-http"
        )
    raise InvalidArgument(f"invalid reference {text!r}: leave out '{scheme}://' ({rest}){hint}")
