"""`fsnap run`: run an image's program in a writable snapshot with runc."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fsnap.client import Client


def register(subparsers: Any) -> None:
    """Add ``run``."""
    parser = subparsers.add_parser(
        "run",
        help="run an image's program in a new writable snapshot with runc",
        description="Prepare an active snapshot on REF, mount it, and run the image's "
        "Entrypoint + Cmd (or CMD) in it with runc. The snapshot stays for `fsnap commit` "
        "unless --rm; --commit NEWREF makes the image at once. Exit status: the process's.",
    )
    parser.add_argument("--rm", action="store_true", help="remove the snapshot afterwards")
    parser.add_argument("--key", metavar="KEY", help="the active snapshot's key")
    parser.add_argument("--commit", metavar="NEWREF", help="commit the snapshot as NEWREF")
    parser.add_argument(
        "-e",
        "--env",
        action="append",
        default=[],
        metavar="K=V",
        help="set an environment variable (K alone: the host's value)",
    )
    parser.add_argument(
        "--env-file", action="append", default=[], metavar="FILE", help="read K=V lines from FILE"
    )
    parser.add_argument("-w", "--workdir", metavar="DIR", help="working directory")
    parser.add_argument(
        "-u",
        "--user",
        metavar="USER[:GROUP]",
        help="user and group, names from the image or numbers",
    )
    parser.add_argument(
        "-v",
        "--volume",
        action="append",
        default=[],
        metavar="HOST:CTR[:ro]",
        help="bind-mount a host path",
    )
    parser.add_argument(
        "--net",
        default="host",
        metavar="host|none",
        help="the host's network (default) or only a loopback",
    )
    parser.add_argument("--hostname", metavar="NAME", help="the container's hostname")
    parser.add_argument("-t", "--tty", action="store_true", help="allocate a terminal")
    parser.add_argument(
        "-i", "--interactive", action="store_true", help="keep standard input (else /dev/null)"
    )
    parser.add_argument(
        "--read-only",
        action="store_true",
        help="run on a read-only mount of the image (no snapshot)",
    )
    parser.add_argument("--pull", action="store_true", help="pull the image if it is missing")
    parser.add_argument("ref", metavar="REF", help="image reference")
    parser.add_argument(
        "cmd",
        nargs=argparse.REMAINDER,
        metavar="CMD",
        help="command and arguments (replace the image's Cmd)",
    )
    parser.set_defaults(handler=handle_run)


def handle_run(client: Client, args: argparse.Namespace) -> int:
    from fsnap.run import options as opts
    from fsnap.run.session import run

    env = []
    for path in args.env_file:
        env += opts.read_env_file(path, os.environ)
    env += opts.env_assignments(args.env, os.environ)
    options = opts.RunOptions(
        cmd=args.cmd,
        rm=args.rm,
        key=args.key,
        commit=args.commit,
        env=env,
        workdir=args.workdir,
        user=args.user,
        volumes=[opts.parse_volume(v) for v in args.volume],
        network=opts.check_network(args.net),
        hostname=args.hostname,
        tty=opts.check_tty(args.tty),
        interactive=args.interactive,
        read_only=args.read_only,
        pull=args.pull,
    )
    result = run(client, args.ref, options, _say)
    if result.image is not None:
        _say(f"committed {result.image.name}: {result.image.target.digest}")
    if result.key:
        _say(
            f"kept active snapshot {result.key}: `fsnap commit {result.key} NEWREF` makes "
            f"an image of it, `fsnap snapshots rm {result.key}` removes it"
        )
    return result.status


def _say(message: str) -> None:
    """fsnap's own messages go to stderr: stdout is the container's."""
    print(f"fsnap: {message}", file=sys.stderr, flush=True)
