"""`fsnap push`: upload an image of the store to a registry."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from fsnap.cli import add_quiet_option
from fsnap.cli.registry_options import add_registry_options, credentials_of

if TYPE_CHECKING:
    from fsnap.client import Client


def register(subparsers: Any) -> None:
    """Add ``push`` to ``subparsers``."""
    parser = subparsers.add_parser("push", help="push an image to a registry")
    parser.add_argument("ref", metavar="REF", help="image in the store")
    parser.add_argument(
        "target", metavar="TARGET", nargs="?", help="where to push it (default: REF)"
    )
    add_registry_options(parser)
    add_quiet_option(parser)
    parser.set_defaults(handler=handle_push)


def handle_push(client: Client, args: argparse.Namespace) -> int:
    from fsnap.cli.progress import PushReporter, mode_for, reporting

    with reporting(PushReporter, mode_for(sys.stdout, args.quiet), sys.stdout) as progress:
        desc = client.push(
            args.ref,
            args.target,
            plain_http=args.plain_http,
            credentials=credentials_of(args),
            ca_file=args.ca_file,
            progress=progress,
        )
    print(f"{args.target or args.ref}: {desc.digest}")
    return 0
