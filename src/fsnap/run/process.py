"""The container's process from an image config and the command line, as containerd and
podman build it (``oci.WithImageConfig``): pure functions, tested without runc.

- args: ``Entrypoint`` + ``Cmd``; a command on the command line replaces ``Cmd`` only.
- env: a default PATH unless the image sets one, the image's ``Env``, HOSTNAME, TERM with a
  terminal, then ``-e``/``--env-file`` (a later value of a name replaces an earlier one in
  place); HOME from the user's passwd entry unless set.
- cwd: ``-w``, else ``WorkingDir`` (relative to /), else /.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fsnap.errors import InvalidArgument
from fsnap.run.spec import Process, User

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class ImageRuntime:
    """The runtime part of an image config (``config`` of the config document)."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    stop_signal: str = ""

    @classmethod
    def from_config(cls, document: Mapping[str, Any]) -> ImageRuntime:
        """From a whole image config document; ill-typed fields are an error, not ignored."""
        config = document.get("config") or {}
        if not isinstance(config, Mapping):
            raise InvalidArgument("image config: 'config' is not an object")
        return cls(
            entrypoint=_strings(config, "Entrypoint"),
            cmd=_strings(config, "Cmd"),
            env=_strings(config, "Env"),
            working_dir=_string(config, "WorkingDir"),
            user=_string(config, "User"),
            stop_signal=_string(config, "StopSignal"),
        )


def _strings(config: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = config.get(name)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"image config: {name} is not a list of strings")
    return tuple(value)


def _string(config: Mapping[str, Any], name: str) -> str:
    value = config.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidArgument(f"image config: {name} is not a string")
    return value


def command(image: ImageRuntime, cmd: Sequence[str]) -> tuple[str, ...]:
    """Entrypoint + (``cmd`` if given, else the image's Cmd)."""
    args = (*image.entrypoint, *(cmd or image.cmd))
    if not args:
        raise InvalidArgument("no command: the image has no Entrypoint or Cmd; give one")
    return args


def merge_env(base: Iterable[str], overrides: Iterable[str]) -> list[str]:
    """``base`` with each ``NAME=value`` of ``overrides`` replacing ``NAME`` in place (or
    appended): the order containerd's ``replaceOrAppendEnvValues`` keeps."""
    merged: dict[str, str] = {}
    for item in (*base, *overrides):
        name = item.partition("=")[0]
        merged[name] = item
    return list(merged.values())


def environment(
    image: ImageRuntime, overrides: Sequence[str], user: User, hostname: str, terminal: bool
) -> tuple[str, ...]:
    """The process environment (see the module docstring for the order)."""
    base = [f"PATH={DEFAULT_PATH}", f"HOSTNAME={hostname}"]
    if terminal:
        base.append("TERM=xterm")
    env = merge_env(base, [*image.env, *overrides])
    if not any(item.startswith("HOME=") for item in env):
        env.append(f"HOME={user.home}")
    return tuple(env)


def working_dir(image: ImageRuntime, override: str | None) -> str:
    """``-w`` (absolute) or the image's WorkingDir (relative ones are taken from /)."""
    if override is not None:
        if not override.startswith("/"):
            raise InvalidArgument(f"the working directory {override!r} is not absolute")
        return clean_path(override)
    return clean_path(image.working_dir or "/")


def clean_path(path: str) -> str:
    """``path`` as a normalised absolute path (relative ones are taken from /)."""
    return "/" + posixpath.normpath("/" + path).lstrip("/")


def build_process(
    image: ImageRuntime,
    *,
    cmd: Sequence[str],
    env: Sequence[str],
    workdir: str | None,
    user: User,
    hostname: str,
    terminal: bool,
) -> Process:
    """The whole process of a run."""
    return Process(
        args=command(image, cmd),
        env=environment(image, env, user, hostname, terminal),
        cwd=working_dir(image, workdir),
        user=user,
        terminal=terminal,
    )
