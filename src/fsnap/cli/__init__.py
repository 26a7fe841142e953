"""The ``fsnap`` command line: parse, call the library, print.

Each topic lives in its own module with a ``register(subparsers)`` function that adds its
sub-commands; each sub-command's handler takes ``(client, args)`` and returns an exit code.
Errors are mapped to messages and exit codes here, once: no traceback reaches a user; and
logging is configured here, once (``--log-level``, else ``$FSNAP_LOG``: ``fsnap.logs``).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from fsnap import logs
from fsnap.errors import FsnapError

# Every topic module under fsnap.cli, in the order ``fsnap --help`` lists them.
TOPICS = (
    "pull",
    "images",
    "content",
    "snapshots",
    "mount",
    "gc",
    "check",
    "commit",
    "convert",
    "push",
    "login",
    "inspect",
    "info",
    "serve",
    "run",
    "transfer",
    "version",
)

# Which topic registers each command, so that a command loads only its own topic's parser.
# A topic's module imports no engine (httpx, trio, rich, lmdb, pyfuse3 ...): its handlers
# do, so even `fsnap --help`, which registers every topic, loads none of them (0.42 s ->
# 0.1 s, see docs/benchmarks.md). tests/test_cli.py checks this table against TOPICS and
# what the parsers import.
COMMANDS = {
    "pull": "pull",
    "images": "images",
    "rmi": "images",
    "content": "content",
    "snapshots": "snapshots",
    "mount": "mount",
    "umount": "mount",
    "mounts": "mount",
    "gc": "gc",
    "check": "check",
    "commit": "commit",
    "convert": "convert",
    "push": "push",
    "login": "login",
    "logout": "login",
    "inspect": "inspect",
    "history": "inspect",
    "diff": "inspect",
    "analyze": "inspect",
    "which": "inspect",
    "tree": "inspect",
    "du": "inspect",
    "info": "info",
    "serve": "serve",
    "run": "run",
    "import": "transfer",
    "export": "transfer",
    "tag": "transfer",
    "version": "version",
}

# Exit code of an unexpected error (a bug): EX_SOFTWARE from sysexits.h.
INTERNAL_ERROR = 70
# stdout's reader went away: the status a shell reports for a process killed by SIGPIPE.
SIGPIPE_STATUS = 141

DESCRIPTION = "fsnap: pull container images, unpack them into snapshots, mount them over FUSE."


def default_root() -> Path:
    """``--root``, else ``$FSNAP_ROOT``, else /var/lib/fsnap (root) or $XDG_DATA_HOME/fsnap."""
    env = os.environ.get("FSNAP_ROOT")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/fsnap")
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local/share")
    return Path(data) / "fsnap"


def build_parser(topics: Sequence[str] = TOPICS) -> argparse.ArgumentParser:
    """The parser with the commands of ``topics`` (all of them unless told otherwise)."""
    parser = argparse.ArgumentParser(prog="fsnap", description=DESCRIPTION)
    parser.add_argument("--root", type=Path, default=None, help="fsnap state directory")
    add_log_level(parser, default=None)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for topic in topics:
        module = importlib.import_module(f"fsnap.cli.{topic}")
        module.register(subparsers)
    return parser


def add_log_level(parser: argparse.ArgumentParser, default: str | None) -> None:
    """``--log-level``: on ``fsnap`` itself, and again on commands that are services."""
    parser.add_argument(
        "--log-level",
        default=default,
        choices=logs.LEVELS,
        help=f"what to log on stderr (default ${logs.ENV}, else {logs.DEFAULT})",
    )


def add_quiet_option(parser: argparse.ArgumentParser) -> None:
    """``-q``/``--quiet`` of the commands that draw progress (``fsnap.cli.progress``)."""
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="print only the final reference and digest"
    )


# Global options that take a value, as topics_for must skip them.
_VALUED = ("--root", "--log-level")


def topics_for(argv: Sequence[str]) -> Sequence[str]:
    """The topics needed to parse ``argv``: one for a known command, else all (for help)."""
    rest = list(argv)
    while rest:
        word = rest.pop(0)
        if word in _VALUED:
            if rest:
                rest.pop(0)
            continue
        if word.startswith(tuple(f"{option}=" for option in _VALUED)):
            continue
        topic = COMMANDS.get(word)
        return (topic,) if topic is not None else TOPICS
    return TOPICS


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(topics_for(words))
    args = parser.parse_args(words)
    service = getattr(args, "service", False)  # (a service logs its info lines too)
    level = args.log_level or logs.level_from_env("info" if service else logs.DEFAULT)
    if level not in logs.LEVELS:
        parser.error(f"${logs.ENV}={level!r}: choose one of {', '.join(logs.LEVELS)}")
    logs.configure(level, service=service)
    root = (args.root or default_root()).absolute()
    from fsnap.client import Client

    def command() -> int:
        with Client(root) as client:
            try:
                code: int = args.handler(client, args)
            except BaseException as exc:
                if out_of_space(exc, root):
                    from fsnap.info.store import no_space

                    raise no_space(root) from None
                raise
            return code

    return guarded("fsnap", command)


def out_of_space(exc: BaseException, root: Path) -> bool:
    """Whether ``exc`` is (or wraps, in a group or as its cause) ENOSPC/EDQUOT on a path
    under ``root`` (or on no named path: a write to a descriptor the store opened), or
    LMDB's ``DiskError`` (its name for ENOSPC; the metadata lives in ``root``)."""
    if isinstance(exc, BaseExceptionGroup):
        return any(out_of_space(inner, root) for inner in exc.exceptions)
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return exc.filename is None or Path(os.fsdecode(exc.filename)).is_relative_to(root)
    lmdb = sys.modules.get("lmdb")  # (not imported: no LMDB error can have come)
    if lmdb is not None and isinstance(exc, lmdb.DiskError):
        return True
    return exc.__cause__ is not None and out_of_space(exc.__cause__, root)


def guarded(prog: str, call: Callable[[], int]) -> int:
    """Run a command's ``call`` and turn every error into one line on stderr and an exit
    code: the one place (for ``fsnap`` and ``fsnap-overlay``) where errors meet the user."""
    try:
        code = _unwrap_interrupt(call)
        sys.stdout.flush()  # a reader gone away shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        return _reader_gone()
    except FsnapError as exc:
        if not exc.shown:
            print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug of ours: still one line, unless asked for the traceback
        if os.environ.get("FSNAP_DEBUG"):
            raise
        print(
            f"{prog}: internal error: {type(exc).__name__}: {exc} "
            "(run again with FSNAP_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return INTERNAL_ERROR


def _unwrap_interrupt(call: Callable[[], int]) -> int:
    """``call()``; a Ctrl-C that reaches here inside an exception group (trio's nurseries
    wrap what their tasks raise) is raised as the plain ``KeyboardInterrupt`` it is."""
    try:
        return call()
    except BaseExceptionGroup as group:
        if group.subgroup(KeyboardInterrupt) is not None:
            raise KeyboardInterrupt from None
        raise


def _reader_gone() -> int:
    """stdout's reader closed the pipe (``fsnap images | head -1``): stop quietly, as
    coreutils do, with the SIGPIPE status. stdout goes to /dev/null so the interpreter's
    last flush of what is still buffered cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return SIGPIPE_STATUS


def run() -> None:
    """The ``fsnap`` command: ``main``, then the exit without the interpreter's teardown
    (``logs.exit_now``: the store is closed, stdout flushed by ``guarded``)."""
    logs.exit_now(main())
