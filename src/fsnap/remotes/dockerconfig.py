"""Docker's credential store: ``config.json`` and the ``docker-credential-*`` helpers.

Where ``docker login`` keeps credentials, so one login serves docker and fsnap alike:

- ``$DOCKER_CONFIG/config.json`` (default ``~/.docker/config.json``);
- ``credHelpers`` maps a registry to a helper name, ``credsStore`` names the helper for
  every other registry; a helper is the executable ``docker-credential-NAME`` on PATH,
  spoken to over stdin/stdout (``get``: the server URL in, ``{"ServerURL", "Username",
  "Secret"}`` out; ``store``: that JSON in; ``erase``: the server URL in);
- otherwise ``auths[server].auth``, base64 of ``user:password`` (``username``/``password``
  fields are read too).

Docker Hub's server key is ``https://index.docker.io/v1/``; other registries are keyed by
``host[:port]`` (URL-shaped keys such as ``https://host/v1/`` match when reading).
Writes replace the file atomically (a temporary file in the same directory, fsync'ed,
renamed) with mode 0600, keeping every key fsnap does not manage.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from fsnap.errors import InvalidArgument
from fsnap.remotes.auth import Credentials

# Hosts that all mean Docker Hub in a docker config (its legacy index address among them).
DOCKER_HUB_HOSTS = ("docker.io", "index.docker.io", "registry-1.docker.io")
DOCKER_HUB_SERVER = "https://index.docker.io/v1/"
HELPER_PREFIX = "docker-credential-"
# A helper answers in well under a second; one that hangs must not hang a pull.
HELPER_TIMEOUT = 30.0
# What we accept from a helper or read as config.json: far beyond any real one.
MAX_HELPER_OUTPUT = 64 * 1024
MAX_CONFIG_SIZE = 4 << 20
_HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_NOT_FOUND = "credentials not found"


def default_docker_config() -> Path:
    """Where ``docker login`` writes: ``$DOCKER_CONFIG/config.json`` or ``~/.docker/``."""
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def server_key(host: str) -> str:
    """The key docker files ``host``'s credentials under (Docker Hub has its own)."""
    return DOCKER_HUB_SERVER if host in DOCKER_HUB_HOSTS else host


def lookup(path: Path, host: str) -> Credentials | None:
    """The credentials stored for ``host``: its helper's, else the ``auths`` entry's."""
    config = _load(path)
    helper = _helper_of(config, host, path)
    if helper is not None:
        return _helper_get(helper, server_key(host))
    return _from_auths(config, path, host)


def store(path: Path, host: str, credentials: Credentials) -> str:
    """Keep ``credentials`` for ``host``; returns where they went (for the user)."""
    config = _load(path)
    helper = _helper_of(config, host, path)
    key = server_key(host)
    if helper is not None:
        secret = {"ServerURL": key, "Username": credentials.username}
        secret["Secret"] = credentials.password
        _run_helper(helper, "store", json.dumps(secret))
        return f"credential helper {HELPER_PREFIX}{helper}"
    auths = config.setdefault("auths", {})
    if not isinstance(auths, dict):
        raise InvalidArgument(f"docker config {path}: 'auths' is not an object")
    raw = f"{credentials.username}:{credentials.password}".encode()
    for stale in [k for k in auths if _key_host(str(k)) in _aliases(host)]:
        del auths[stale]  # e.g. an old "https://host/v1/" entry lookup() might find first
    auths[key] = {"auth": base64.b64encode(raw).decode("ascii")}
    _write_atomic(path, config)
    return str(path)


def erase(path: Path, host: str) -> bool:
    """Forget ``host``'s credentials (helper and ``auths``); False if there were none."""
    config = _load(path)
    helper = _helper_of(config, host, path)
    found = False
    if helper is not None:
        found = _helper_get(helper, server_key(host)) is not None
        if found:
            _run_helper(helper, "erase", server_key(host))
    auths = config.get("auths")
    if isinstance(auths, dict):
        keys = [k for k in auths if _key_host(str(k)) in _aliases(host)]
        for key in keys:
            del auths[key]
        if keys:
            _write_atomic(path, config)
            found = True
    return found


# -- config.json -----------------------------------------------------------------------------


def _load(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            text = file.read(MAX_CONFIG_SIZE + 1)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise InvalidArgument(f"cannot read docker config {path}: {exc}") from None
    if len(text) > MAX_CONFIG_SIZE:
        raise InvalidArgument(f"docker config {path} is over {MAX_CONFIG_SIZE} bytes")
    try:
        data = json.loads(text) if text.strip() else {}
    except (ValueError, RecursionError) as exc:  # deep nesting: found by fuzzing
        raise InvalidArgument(f"cannot read docker config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"docker config {path} is not a JSON object")
    return data


def _write_atomic(path: Path, config: dict[str, Any]) -> None:
    """Replace ``path`` (a symlink's target, if it is one) by ``config``, mode 0600."""
    target = path.resolve()
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as file:  # mkstemp creates it 0600
            json.dump(config, file, indent="\t")
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    directory = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _aliases(host: str) -> set[str]:
    return set(DOCKER_HUB_HOSTS) if host in DOCKER_HUB_HOSTS else {host}


def _key_host(key: str) -> str:
    if "://" in key:
        key = key.split("://", 1)[1]
    return key.split("/", 1)[0]


def _from_auths(config: dict[str, Any], path: Path, host: str) -> Credentials | None:
    auths = config.get("auths")
    if not isinstance(auths, dict):
        return None
    for key, entry in auths.items():
        if _key_host(str(key)) in _aliases(host) and isinstance(entry, dict):
            found = _entry_credentials(path, str(key), entry)
            if found is not None:
                return found
    return None


def _entry_credentials(path: Path, key: str, entry: dict[str, Any]) -> Credentials | None:
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            user, sep, password = base64.b64decode(auth, validate=True).decode().partition(":")
        except ValueError:  # binascii.Error, UnicodeDecodeError, non-ASCII text (fuzzing)
            user, sep, password = "", "", ""
        if not sep:
            raise InvalidArgument(f"docker config {path}: 'auth' of {key} is not base64 user:pass")
        return Credentials(user, password)
    username, secret = entry.get("username"), entry.get("password")
    if isinstance(username, str) and isinstance(secret, str) and username:
        return Credentials(username, secret)
    return None


# -- credential helpers ------------------------------------------------------------------


def _helper_of(config: dict[str, Any], host: str, path: Path) -> str | None:
    """The helper name for ``host``: ``credHelpers`` first, then ``credsStore``."""
    helpers = config.get("credHelpers")
    name: object = None
    if isinstance(helpers, dict):
        name = next((v for k, v in helpers.items() if _key_host(str(k)) in _aliases(host)), None)
    if name is None:
        name = config.get("credsStore")
    if name is None or name == "":
        return None
    if not isinstance(name, str) or not _HELPER_NAME.fullmatch(name):
        raise InvalidArgument(f"docker config {path}: bad credential helper name {name!r}")
    return name


def _helper_get(helper: str, server: str) -> Credentials | None:
    answer = _run_helper(helper, "get", server, missing_ok=True)
    if answer is None:
        return None
    try:
        data = json.loads(answer)
        username, secret = data["Username"], data["Secret"]
    except (ValueError, TypeError, KeyError, RecursionError):
        raise InvalidArgument(f"{HELPER_PREFIX}{helper} get: answer is not credentials") from None
    if not isinstance(username, str) or not isinstance(secret, str) or not secret:
        raise InvalidArgument(f"{HELPER_PREFIX}{helper} get: answer is not credentials")
    return Credentials(username, secret)


def _run_helper(helper: str, action: str, stdin: str, missing_ok: bool = False) -> str | None:
    """Run ``docker-credential-HELPER ACTION`` with ``stdin``; its stdout. With
    ``missing_ok``, the protocol's "credentials not found" answer is None."""
    program = shutil.which(HELPER_PREFIX + helper)
    if program is None:
        raise InvalidArgument(f"credential helper {HELPER_PREFIX}{helper} is not on PATH")
    try:
        done = subprocess.run(
            [program, action],
            input=stdin.encode(),
            capture_output=True,
            timeout=HELPER_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InvalidArgument(f"{HELPER_PREFIX}{helper} {action}: {exc}") from None
    output = done.stdout[:MAX_HELPER_OUTPUT].decode("utf-8", "replace")
    if done.returncode != 0:
        if missing_ok and _NOT_FOUND in output.lower():
            return None
        said = (output.strip() or done.stderr.decode("utf-8", "replace").strip())[:200]
        raise InvalidArgument(
            f"{HELPER_PREFIX}{helper} {action} failed (exit {done.returncode}): {said}"
        )
    if len(done.stdout) > MAX_HELPER_OUTPUT:
        raise InvalidArgument(
            f"{HELPER_PREFIX}{helper} {action}: answer over {MAX_HELPER_OUTPUT} bytes"
        )
    return output
