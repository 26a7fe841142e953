"""How a mount's daemon reaches the registry of its lazy layers, as the pull that made them.

``fsnap mount --lazy --pull -u USER --password-stdin REF MNT`` pulls with those options; the
daemon that later fetches the files needs them too. ``RegistryAccess`` carries them: the
registry domain they were given for, the credentials, ``--plain-http`` and ``--ca-file``.
The spawning ``fsnap mount`` writes it to the mount supervisor's stdin (never to its argv,
its spec or any file: only its memory, and the memory of each server it forks, hold the
password), where ``give`` makes it this process's; ``given`` hands it to the lazy fetcher.

Only requests to that same domain get them (``for_domain``): a lazy layer fetched from
another registry (an image sharing layers) is fetched with the docker config's credentials
for that registry, as a pull of it would be. Inside a client, the credentials go only to
the registry's own origin (``fsnap.remotes.origin``), never to a redirect's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fsnap.errors import InvalidArgument

if TYPE_CHECKING:
    from fsnap.remotes.auth import Credentials

# What the supervisor reads from its stdin: far more than any real set of options.
MAX_ACCESS_JSON = 64 << 10


@dataclass(frozen=True)
class RegistryAccess:
    """The registry options of one pull, for ``domain``."""

    domain: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    plain_http: bool | None = None
    ca_file: str | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "domain": self.domain,
                "username": self.username,
                "password": self.password,
                "plain_http": self.plain_http,
                "ca_file": self.ca_file,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> RegistryAccess:
        try:
            doc = json.loads(text)
            access = cls(
                str(doc["domain"]),
                _opt_str(doc.get("username")),
                _opt_str(doc.get("password")),
                None if doc.get("plain_http") is None else bool(doc["plain_http"]),
                _opt_str(doc.get("ca_file")),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise InvalidArgument(f"registry access for the mount daemon: {e}") from None
        return access

    def credentials(self) -> Credentials | None:
        from fsnap.remotes.auth import Credentials  # loads the HTTP stack: only when used

        if self.username is None or self.password is None:
            return None
        return Credentials(self.username, self.password)

    def ca_path(self) -> Path | None:
        return Path(self.ca_file) if self.ca_file else None

    def for_domain(self, domain: str) -> RegistryAccess | None:
        """These options if they were given for ``domain``, else None."""
        return self if domain == self.domain else None


_GIVEN: list[RegistryAccess] = []  # at most one: this process's


def give(access: RegistryAccess | None) -> None:
    """Make ``access`` this process's (the supervisor, before it forks its servers)."""
    _GIVEN[:] = [] if access is None else [access]


def given() -> RegistryAccess | None:
    return _GIVEN[0] if _GIVEN else None


def _opt_str(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    return value
