"""`fsnap serve`: be containerd's snapshotter (a proxy plugin) over this store.

containerd's config names the socket::

    [proxy_plugins.fsnap]
      type = "snapshot"
      address = "/run/fsnap/fsnap.sock"

and ``ctr run --snapshotter fsnap ...`` then keeps its snapshots in fsnap's store.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fsnap.cli import add_log_level

if TYPE_CHECKING:
    from fsnap.client import Client


def register(subparsers: Any) -> None:
    """Add ``serve`` to ``subparsers``."""
    parser = subparsers.add_parser(
        "serve", help="serve containerd's snapshots gRPC API (a proxy snapshotter)"
    )
    parser.add_argument(
        "--address",
        type=Path,
        default=None,
        help="Unix socket (default /run/fsnap/fsnap.sock, or under $XDG_RUNTIME_DIR)",
    )
    # Also after `serve`; a service logs info by default (debug: one line per call), with
    # timestamps (fsnap.logs).
    add_log_level(parser, default=argparse.SUPPRESS)
    parser.set_defaults(handler=handle_serve, service=True)


def handle_serve(client: Client, args: argparse.Namespace) -> int:
    from fsnap.serve.server import default_address, serve

    address = (args.address or default_address()).absolute()

    def ready(path: Path) -> None:
        print(f"fsnap serve: listening on {path}", flush=True)

    serve(client.snapshots, address, ready)
    return 0
