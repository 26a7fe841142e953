"""Options of the commands that talk to a registry (``pull``, ``push``, ``login``).

Credentials, first match wins, so that no secret needs to be on a command line (where every
local user reads it in /proc/PID/cmdline):

1. ``--user USER`` (``-u``) or ``$FSNAP_USERNAME``, with the password from stdin
   (``--password-stdin``, docker login's convention) or ``$FSNAP_PASSWORD``;
2. nothing given: the docker config, per registry (what ``fsnap login`` stored, in
   ``config.json`` or a credential helper).

``--user USER:PASS`` still works, with a warning.

``fsnap.remotes`` is imported by the functions that use it, not here: it loads httpx, trio,
ssl and zstandard (0.2-0.7 s on a loaded 2-core machine, ``python -X importtime``), which
``fsnap pull --help`` and ``fsnap --help`` (every topic registers its options) must not pay.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING

from fsnap.errors import InvalidArgument

if TYPE_CHECKING:
    from fsnap.remotes.auth import Credentials

USER_ENV = "FSNAP_USERNAME"
PASSWORD_ENV = "FSNAP_PASSWORD"
# A password on stdin is a line, not a file: anything longer is a mistake.
MAX_STDIN_PASSWORD = 64 * 1024


def add_registry_options(parser: argparse.ArgumentParser) -> None:
    """``--plain-http``, ``--ca-file``, ``--user USER`` and ``--password-stdin``."""
    parser.add_argument(
        "--plain-http",
        action="store_const",
        const=True,
        default=None,
        help="talk HTTP, not HTTPS (the default for localhost and 127.0.0.0/8)",
    )
    parser.add_argument(
        "--ca-file",
        type=Path,
        metavar="PEM",
        help="trust this CA for the registry's TLS certificate (SSL_CERT_FILE works too)",
    )
    parser.add_argument(
        "-u",
        "--user",
        metavar="USER",
        help=f"registry user (or ${USER_ENV}); the password comes from --password-stdin "
        f"or ${PASSWORD_ENV} (USER:PASS works but shows it to every local user)",
    )
    parser.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin"
    )
    parser.add_argument(
        "--hosts-dir",
        metavar="DIR",
        help="containerd-style registry host configuration (DIR/HOST/hosts.toml, docker's "
        "DIR/HOST/*.crt|*.cert|*.key); default /etc/fsnap/certs.d, /etc/containerd/certs.d",
    )


def credentials_of(
    args: argparse.Namespace, stdin: IO[str] | None = None, *, prompt: bool = False
) -> Credentials | None:
    """The credentials the options and environment give; None: use the docker config.

    With ``prompt`` (``fsnap login``) a missing username or password is asked for on the
    terminal, if there is one. ``--hosts-dir`` takes effect here too: it becomes
    ``$FSNAP_HOSTS_DIR`` for the registry client this command makes.

    ``fsnap.remotes`` (httpx, trio, ssl: ~0.3 s of a cold start) is imported only when
    there are credentials or a hosts directory: ``fsnap mount`` of a stored image asks
    here too, and needs none of it."""
    if getattr(args, "hosts_dir", None):
        from fsnap.remotes.hosts import HOSTS_DIR_ENV

        os.environ[HOSTS_DIR_ENV] = args.hosts_dir
    stdin = stdin or sys.stdin
    if args.user and ":" in args.user:
        if args.password_stdin:
            raise InvalidArgument("--user USER:PASS and --password-stdin exclude each other")
        print(
            "fsnap: warning: --user USER:PASS shows the password to every local user; "
            f"use --password-stdin or ${PASSWORD_ENV}",
            file=sys.stderr,
        )
        return parse_user(args.user)
    user = args.user or os.environ.get(USER_ENV) or None
    password = _read_password(stdin) if args.password_stdin else os.environ.get(PASSWORD_ENV)
    interactive = prompt and not args.password_stdin and stdin.isatty()
    if user is None and interactive:
        user = input("Username: ").strip() or None
    if user is None:
        if args.password_stdin or password is not None:
            source = "--password-stdin" if args.password_stdin else f"${PASSWORD_ENV}"
            raise InvalidArgument(f"{source} needs --user USER (or ${USER_ENV})")
        if prompt:
            raise InvalidArgument(f"no username: pass --user USER (or set ${USER_ENV})")
        return None
    if password is None and interactive:
        password = getpass.getpass("Password: ")
    if not password:
        raise InvalidArgument(
            f"no password for user {user!r}: pipe it to --password-stdin or set ${PASSWORD_ENV}"
        )
    from fsnap.remotes.auth import Credentials

    return Credentials(user, password)


def _read_password(stdin: IO[str]) -> str:
    """The password piped to us: one trailing newline (``echo``'s) is not part of it."""
    text = stdin.read(MAX_STDIN_PASSWORD + 1)
    if len(text) > MAX_STDIN_PASSWORD:
        raise InvalidArgument(f"--password-stdin: more than {MAX_STDIN_PASSWORD} bytes")
    return text.removesuffix("\n").removesuffix("\r")


def parse_user(text: str) -> Credentials:
    """``USER:PASS`` (the password may itself contain colons)."""
    from fsnap.remotes.auth import Credentials

    user, sep, password = text.partition(":")
    if not sep or not user:
        raise InvalidArgument("--user expects USER or USER:PASS")
    return Credentials(user, password)
