"""`fsnap commit`: a snapshot's changes become a new image layer on top of its base image."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from fsnap.cli import add_quiet_option
from fsnap.cli.snapshots import warn_sockets_left_out
from fsnap.progress import human_size

if TYPE_CHECKING:
    from fsnap.client import Client


def register(subparsers: Any) -> None:
    """Add ``commit`` to ``subparsers``."""
    parser = subparsers.add_parser(
        "commit", help="make a new image from a snapshot's changes (one new layer)"
    )
    parser.add_argument("key", metavar="KEY", help="active or committed snapshot")
    parser.add_argument("new_ref", metavar="NEWREF", help="name of the new image")
    parser.add_argument(
        "--compression",
        choices=("gzip", "zstd", "none"),
        default="gzip",
        help="layer compression (default gzip)",
    )
    parser.add_argument(
        "--base",
        metavar="REF",
        help="the base image (default: the image whose top layer is KEY's parent)",
    )
    add_quiet_option(parser)
    parser.set_defaults(handler=handle_commit)


def handle_commit(client: Client, args: argparse.Namespace) -> int:
    from fsnap.cli.progress import CommitReporter, mode_for, reporting

    with reporting(CommitReporter, mode_for(sys.stdout, args.quiet), sys.stdout) as progress:
        image = client.commit_image(
            args.key,
            args.new_ref,
            args.compression,
            base=args.base,
            left_out=warn_sockets_left_out,
            progress=progress,
        )
    if args.quiet:
        print(f"{image.name}: {image.target.digest}")
    else:
        print(f"{image.name}: {image.target.digest} {human_size(image.size)}")
    return 0
