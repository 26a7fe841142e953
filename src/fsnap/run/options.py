"""Command-line values of ``fsnap run`` checked before anything is mounted: ``-e`` and
``--env-file`` assignments, ``-v`` specs, ``--net``, ``-t`` without a terminal. Errors are
``InvalidArgument``."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fsnap.errors import InvalidArgument
from fsnap.run.process import clean_path
from fsnap.run.spec import Volume

NETWORKS = ("host", "none")
MAX_ENV_FILE = 1 << 20


@dataclass
class RunOptions:
    """Everything ``fsnap run`` takes besides the image reference (see ``fsnap run --help``)."""

    cmd: Sequence[str] = ()
    rm: bool = False
    key: str | None = None
    commit: str | None = None
    env: Sequence[str] = ()  # NAME=value, already merged from -e and --env-file
    workdir: str | None = None
    user: str | None = None
    volumes: Sequence[Volume] = ()
    network: str = "host"
    hostname: str | None = None
    tty: bool = False
    interactive: bool = False
    read_only: bool = False
    pull: bool = False


def env_assignments(items: Sequence[str], host: Mapping[str, str]) -> list[str]:
    """``NAME=value`` items as given; a bare ``NAME`` takes the host's value (and is dropped
    when the host has none), as ``docker run -e NAME`` does."""
    result = []
    for item in items:
        name, sep, _ = item.partition("=")
        if not name or "\0" in item or any(c.isspace() for c in name):
            raise InvalidArgument(f"invalid environment variable {item!r}")
        if sep:
            result.append(item)
        elif name in host:
            result.append(f"{name}={host[name]}")
    return result


def read_env_file(path: str, host: Mapping[str, str]) -> list[str]:
    """The assignments of an env file: one per line, blank lines and ``#`` comments skipped."""
    try:
        with open(path, "rb") as src:
            data = src.read(MAX_ENV_FILE + 1)
    except OSError as exc:
        raise InvalidArgument(f"cannot read env file {path}: {exc.strerror}") from None
    if len(data) > MAX_ENV_FILE:
        raise InvalidArgument(f"env file {path} is larger than {MAX_ENV_FILE} bytes")
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise InvalidArgument(f"env file {path} is not UTF-8") from None
    lines = [line.strip() for line in text.splitlines()]
    return env_assignments([line for line in lines if line and not line.startswith("#")], host)


def parse_volume(spec: str) -> Volume:
    """``HOST:CTR[:ro|rw]``: HOST an existing path, absolute or (as docker and podman take
    it) starting with ``.`` from the working directory; CTR absolute and not /. A bare
    name is a named volume in docker, which fsnap has none of: refused, saying so."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
        raise InvalidArgument(f"invalid volume {spec!r}: expected HOST:CONTAINER[:ro]")
    host, ctr = parts[0], parts[1]
    if not host.startswith(("/", ".")):
        raise InvalidArgument(
            f"invalid volume {spec!r}: named volumes are not supported; give a host path "
            f"(/{host} or ./{host})"
        )
    if not ctr.startswith("/"):
        raise InvalidArgument(f"invalid volume {spec!r}: the container path must be absolute")
    if not os.path.exists(host):
        raise InvalidArgument(f"invalid volume {spec!r}: {host} does not exist")
    target = clean_path(ctr)
    if target == "/":
        raise InvalidArgument(f"invalid volume {spec!r}: cannot mount over /")
    readonly = len(parts) == 3 and parts[2] == "ro"
    return Volume(os.path.realpath(host), target, readonly)


def check_network(network: str) -> str:
    if network not in NETWORKS:
        raise InvalidArgument(f"--net {network}: expected one of {', '.join(NETWORKS)}")
    return network


def check_tty(tty: bool) -> bool:
    """``-t`` as given: runc gives the container fsnap's controlling terminal, so a
    ``-t`` without one (a pipe, cron, CI) is refused here, before a snapshot is made, not
    by runc after it ("open /dev/tty: no such device or address", exit 125)."""
    if not tty:
        return False
    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_CLOEXEC))
    except OSError:
        raise InvalidArgument(
            "-t needs a terminal, and fsnap runs without one: leave out -t (-i alone passes stdin)"
        ) from None
    return True
