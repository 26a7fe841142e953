"""`fsnap push`: upload an image of the store to a registry."""

from __future__ import annotations

import argparse
import sys
from typing import IO, Any

from fsnap.cli.registry_options import add_registry_options, credentials_of
from fsnap.client import Client
from fsnap.oci import Descriptor
from fsnap.progress import blob_label, human_size, summary_line
from fsnap.push import PushProgress, PushState


def register(subparsers: Any) -> None:
    """Add ``push`` to ``subparsers``."""
    parser = subparsers.add_parser("push", help="push an image to a registry")
    parser.add_argument("ref", metavar="REF", help="image in the store")
    parser.add_argument(
        "target", metavar="TARGET", nargs="?", help="where to push it (default: REF)"
    )
    add_registry_options(parser)
    parser.set_defaults(handler=handle_push)


class PlainPushProgress(PushProgress):
    """One line per state change, as ``fsnap pull`` prints them off a terminal."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def _say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def blob_state(self, desc: Descriptor, state: PushState) -> None:
        size = f" {human_size(desc.size)}" if state == "uploading" else ""
        self._say(f"{blob_label(desc)}: {state}{size}")

    def manifest_pushed(self, desc: Descriptor, reference: str) -> None:
        self._say(f"{blob_label(desc)}: pushed as {reference}")

    def finished(self, pushed: int, elapsed: float) -> None:
        self._say(summary_line(pushed, elapsed))


def handle_push(client: Client, args: argparse.Namespace) -> int:
    desc = client.push(
        args.ref,
        args.target,
        plain_http=args.plain_http,
        credentials=credentials_of(args),
        progress=PlainPushProgress(sys.stdout),
    )
    print(f"{args.target or args.ref}: {desc.digest}")
    return 0
