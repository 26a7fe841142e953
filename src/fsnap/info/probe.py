"""The answer of one feature probe: available, unavailable, or honestly unknown."""

from __future__ import annotations

import errno
import shutil
import subprocess
from dataclasses import dataclass

# A version query (``runc --version``) that takes longer than this is reported as unknown.
VERSION_TIMEOUT = 5.0


@dataclass(frozen=True)
class Probe:
    """``available`` is None when the machine would not tell; ``detail`` says why/how."""

    available: bool | None
    detail: str = ""

    def text(self) -> str:
        word = {True: "yes", False: "no", None: "unknown"}[self.available]
        return f"{word} ({self.detail})" if self.detail else word


def yes(detail: str = "") -> Probe:
    return Probe(True, detail)


def no(detail: str = "") -> Probe:
    return Probe(False, detail)


def unknown(detail: str) -> Probe:
    return Probe(None, detail)


def from_errno(exc: OSError) -> str:
    """``EOPNOTSUPP`` etc.: the symbolic name a user can search for."""
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


@dataclass(frozen=True)
class Tool:
    """A program fsnap may run: where it is on PATH and what it says its version is."""

    name: str
    path: str | None
    version: str | None

    @property
    def found(self) -> bool:
        return self.path is not None


def probe_tool(name: str, version_args: tuple[str, ...] = ("--version",)) -> Tool:
    """Look ``name`` up on PATH and ask its version (first non-empty output line)."""
    path = shutil.which(name)
    if path is None:
        return Tool(name, None, None)
    try:
        done = subprocess.run(
            [path, *version_args],
            capture_output=True,
            text=True,
            timeout=VERSION_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return Tool(name, path, None)
    lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return Tool(name, path, lines[0] if lines else None)
