"""The container's process from an image config and the command line, as containerd and
podman build it (``oci.WithImageConfig``): pure functions, tested without runc.

- args: ``Entrypoint`` + ``Cmd``; a command on the command line replaces ``Cmd`` only.
- env: a default PATH unless the image sets one, the image's ``Env``, HOSTNAME, TERM with a
  terminal, then ``-e``/``--env-file`` (a later value of a name replaces an earlier one in
  place; a bare ``NAME`` unsets it); HOME from the user's passwd entry unless set.
- cwd: ``-w``, else ``WorkingDir`` (relative to /), else /.

What the kernel or runc would refuse only once the container is being started is refused
here, naming the field: a NUL in an argument, variable or the working directory, a
variable with an empty name, a string longer than execve(2) takes, a working directory
whose name or path is longer than the kernel takes. runc reports some of these only on the
container's stderr with status 1, as if the program had failed.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fsnap.errors import InvalidArgument
from fsnap.run.spec import Process, User

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_ARG_STRLEN = 131072  # execve(2): one argument or variable, its NUL included
NAME_MAX = 255
PATH_MAX = 4096  # with its NUL


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
        env = _strings(config, "Env")
        for item in env:
            if item.startswith("="):
                raise InvalidArgument(f"image config: Env entry {_short(item)} has no name")
        return cls(
            entrypoint=_strings(config, "Entrypoint"),
            cmd=_strings(config, "Cmd"),
            env=env,
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
    for item in value:
        _check_string(f"image config: {name} entry {_short(item)}", item)
    return tuple(value)


def _string(config: Mapping[str, Any], name: str) -> str:
    value = config.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidArgument(f"image config: {name} is not a string")
    _check_string(f"image config: {name} {_short(value)}", value)
    return value


def _check_string(what: str, value: str) -> None:
    """A string execve(2) or a path lookup takes: no NUL, within MAX_ARG_STRLEN."""
    if "\0" in value:
        raise InvalidArgument(f"{what} contains a NUL character")
    if len(value.encode(errors="surrogateescape")) >= MAX_ARG_STRLEN:
        raise InvalidArgument(f"{what} is longer than the {MAX_ARG_STRLEN - 1} bytes execve takes")


def _short(text: str) -> str:
    """``text`` quoted for a message, cut to 60 characters."""
    return repr(text if len(text) <= 60 else text[:57] + "...")


def command(image: ImageRuntime, cmd: Sequence[str]) -> tuple[str, ...]:
    """Entrypoint + (``cmd`` if given, else the image's Cmd)."""
    args = (*image.entrypoint, *(cmd or image.cmd))
    if not args:
        raise InvalidArgument("no command: the image has no Entrypoint or Cmd; give one")
    return args


def merge_env(base: Iterable[str], overrides: Iterable[str]) -> list[str]:
    """``base`` with each ``NAME=value`` of ``overrides`` replacing ``NAME`` in place (or
    appended), and each bare ``NAME`` (no ``=``) removing it: containerd's
    ``replaceOrAppendEnvValues`` (runc refuses a variable without ``=``)."""
    merged: dict[str, str] = {}
    for item in base:
        merged[item.partition("=")[0]] = item
    for item in overrides:
        name, sep, _ = item.partition("=")
        if sep:
            merged[name] = item
        else:
            merged.pop(name, None)
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
        return _checked_dir(clean_path(override))
    return _checked_dir(clean_path(image.working_dir or "/"))


def _checked_dir(path: str) -> str:
    """``path`` if the kernel can look it up: no NUL, names and the whole within limits."""
    raw = path.encode(errors="surrogateescape")
    if b"\0" in raw:
        raise InvalidArgument(f"the working directory {_short(path)} contains a NUL character")
    if len(raw) >= PATH_MAX or any(len(name) > NAME_MAX for name in raw.split(b"/")):
        raise InvalidArgument(
            f"the working directory {_short(path)} is longer than the kernel takes "
            f"({NAME_MAX} bytes a name, {PATH_MAX - 1} in all)"
        )
    return path


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
    args = command(image, cmd)
    variables = environment(image, env, user, hostname, terminal)
    for arg in args:
        _check_string(f"argument {_short(arg)}", arg)
    for variable in variables:
        _check_string(f"environment variable {_short(variable)}", variable)
    return Process(
        args=args,
        env=variables,
        cwd=working_dir(image, workdir),
        user=user,
        terminal=terminal,
    )
