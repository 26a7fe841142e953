"""The ``fsnap`` command line: parse, call the library, print.

Each topic lives in its own module with a ``register(subparsers)`` function that adds its
sub-commands; each sub-command's handler takes ``(client, args)`` and returns an exit code.
Errors are mapped to messages and exit codes here, once: no traceback reaches a user.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from fsnap.errors import FsnapError

# Every topic module under fsnap.cli, in the order ``fsnap --help`` lists them.
TOPICS = ("pull", "images", "content", "snapshots", "mount", "gc", "commit", "push", "inspect")


def default_root() -> Path:
    """``--root``, else ``$FSNAP_ROOT``, else /var/lib/fsnap (root) or $XDG_DATA_HOME/fsnap."""
    env = os.environ.get("FSNAP_ROOT")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/fsnap")
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local/share")
    return Path(data) / "fsnap"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fsnap", description="fsnap: pull container images, unpack them into snapshots, mount them over FUSE.")
    parser.add_argument("--root", type=Path, default=None, help="fsnap state directory")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for topic in TOPICS:
        module = importlib.import_module(f"fsnap.cli.{topic}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    root = (args.root or default_root()).absolute()
    from fsnap.client import Client

    try:
        with Client(root) as client:
            code: int = args.handler(client, args)
            return code
    except FsnapError as exc:
        print(f"fsnap: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("fsnap: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"fsnap: error: {exc}", file=sys.stderr)
        return 1


def run() -> None:
    sys.exit(main())
