"""`fsnap serve`: be containerd's snapshotter (a proxy plugin) over this store.

containerd's config names the socket::

    [proxy_plugins.fsnap]
      type = "snapshot"
      address = "/run/fsnap/fsnap.sock"

and ``ctr run --snapshotter fsnap ...`` then keeps its snapshots in fsnap's store.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

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
    parser.add_argument(
        "--log-level",
        default=os.environ.get("FSNAP_LOG", "info"),
        choices=("debug", "info", "warning", "error"),
        help="debug logs one line per call (default info, or $FSNAP_LOG)",
    )
    parser.set_defaults(handler=handle_serve)


def handle_serve(client: Client, args: argparse.Namespace) -> int:
    from fsnap.serve.server import default_address, serve

    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    address = (args.address or default_address()).absolute()

    def ready(path: Path) -> None:
        print(f"fsnap serve: listening on {path}", flush=True)

    serve(client.snapshots, address, ready)
    return 0
