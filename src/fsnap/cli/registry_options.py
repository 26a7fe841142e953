"""Options every command that talks to a registry takes (``pull``, ``push``)."""

from __future__ import annotations

import argparse
import os

from fsnap.errors import InvalidArgument
from fsnap.remotes.auth import Credentials
from fsnap.remotes.hosts import HOSTS_DIR_ENV


def add_registry_options(parser: argparse.ArgumentParser) -> None:
    """``--plain-http`` and ``--user USER:PASS``."""
    parser.add_argument(
        "--plain-http",
        action="store_const",
        const=True,
        default=None,
        help="talk HTTP, not HTTPS (the default for localhost and 127.0.0.0/8)",
    )
    parser.add_argument("--user", metavar="USER:PASS", help="registry credentials")
    parser.add_argument(
        "--hosts-dir",
        metavar="DIR",
        help="containerd-style registry host configuration (DIR/HOST/hosts.toml, docker's "
        "DIR/HOST/*.crt|*.cert|*.key); default /etc/fsnap/certs.d, /etc/containerd/certs.d",
    )


def credentials_of(args: argparse.Namespace) -> Credentials | None:
    """The ``--user`` credentials, if given (else the docker config is consulted later).
    ``--hosts-dir`` takes effect here too: it becomes ``$FSNAP_HOSTS_DIR`` for the registry
    client this command makes."""
    if getattr(args, "hosts_dir", None):
        os.environ[HOSTS_DIR_ENV] = args.hosts_dir
    return parse_user(args.user) if args.user else None


def parse_user(text: str) -> Credentials:
    """``USER:PASS`` (the password may itself contain colons)."""
    user, sep, password = text.partition(":")
    if not sep or not user:
        raise InvalidArgument("--user expects USER:PASS")
    return Credentials(user, password)
