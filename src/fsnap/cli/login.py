"""`fsnap login` / `fsnap logout`: credentials for a registry, kept in docker's store."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from fsnap.cli.registry_options import add_registry_options, credentials_of
from fsnap.errors import InvalidArgument

if TYPE_CHECKING:
    from fsnap.client import Client


def register(subparsers: Any) -> None:
    """Add ``login`` and ``logout`` to ``subparsers``."""
    parser = subparsers.add_parser(
        "login",
        help="check credentials with a registry and store them (docker's config.json "
        "or credential helper)",
    )
    parser.add_argument("registry", metavar="REGISTRY", help="host[:port], e.g. localhost:5000")
    add_registry_options(parser)
    parser.set_defaults(handler=handle_login)
    parser = subparsers.add_parser("logout", help="forget a registry's stored credentials")
    parser.add_argument("registry", metavar="REGISTRY", help="host[:port]")
    parser.set_defaults(handler=handle_logout)


def handle_login(client: Client, args: argparse.Namespace) -> int:
    credentials = credentials_of(args, prompt=True)
    if credentials is None:  # prompt=True raises first; this keeps the type checker honest
        raise InvalidArgument("no username: pass --user USER")
    where = client.login(
        args.registry, credentials, plain_http=args.plain_http, ca_file=args.ca_file
    )
    print(f"Login Succeeded (credentials stored in {where})")
    return 0


def handle_logout(client: Client, args: argparse.Namespace) -> int:
    if client.logout(args.registry):
        print(f"Removing login credentials for {args.registry}")
    else:
        print(f"Not logged in to {args.registry}")
    return 0
