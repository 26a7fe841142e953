"""The ``fsnap-overlay`` program: mount an overlayfs-format layer stack with fsnap's engine.

Both calling conventions of a FUSE overlay are accepted:

- ``fsnap-overlay [-f] [-d] -o lowerdir=L1:L2,upperdir=U,workdir=W MNT`` (fuse-overlayfs);
- ``fsnap-overlay SOURCE MNT -o OPTIONS``, which is how ``mount.fuse3`` runs the program
  for ``mount -t fuse.fsnap-overlay SOURCE MNT -o ...`` (SOURCE becomes the fsname).

Like fuse-overlayfs it daemonises: the command returns once the mount is live (or with the
reason it could not be made), which is what ``mount(8)`` waits for. ``-f`` serves from
the foreground; ``-d`` is libfuse's debug output, and implies ``-f``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from fsnap.cli import guarded
from fsnap.errors import FsnapError, NotFound, Unavailable
from fsnap.info.fuse import require_fuse
from fsnap.mount.daemon import Ready, pipe_reporter, serve
from fsnap.mount.fs import TreeFS
from fsnap.overlay import options as overlay_options
from fsnap.overlay import stack

PROG = "fsnap-overlay"


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(
        prog=PROG,
        description="Mount lower directories (overlayfs format) merged, with an optional "
        "writable upper directory, through FUSE.",
    )
    cli.add_argument(
        "source",
        nargs="?",
        metavar="SOURCE",
        help="file system name shown in /proc/mounts (mount.fuse3 passes it)",
    )
    cli.add_argument("mountpoint", metavar="MNT")
    cli.add_argument(
        "-o",
        dest="options",
        action="append",
        default=[],
        metavar="OPTS",
        help="lowerdir=L1:L2:...[,upperdir=U,workdir=W][,FUSE options]",
    )
    cli.add_argument("-f", dest="foreground", action="store_true", help="stay in foreground")
    cli.add_argument("-d", dest="debug", action="store_true", help="FUSE debug output (-f)")
    return cli


def fuse_options(
    opts: overlay_options.OverlayOptions, source: str | None, debug: bool
) -> tuple[list[str], bool]:
    """The options pyfuse3 mounts with, and whether the mount is read-only (no upper
    directory, or ``ro`` asked for). The kernel checks permissions (the engine does not)."""
    read_only = not opts.writable or "ro" in opts.fuse
    passed = [o for o in opts.fuse if o not in ("ro", "rw")]
    names = {o.partition("=")[0] for o in passed}
    result = ["ro" if read_only else "rw", "default_permissions"]
    if "fsname" not in names:
        result.append(f"fsname={(source or PROG).replace(',', '_')}")
    if "subtype" not in names:
        result.append(f"subtype={PROG}")
    if os.geteuid() == 0 and "allow_other" not in names:
        result.append("allow_other")
    if debug:
        result.append("debug")
    return [*result, *passed], read_only


def _check_mountpoint(path: str) -> str:
    if not os.path.isdir(path):
        raise NotFound(f"mount point {path} is not a directory")
    return os.path.abspath(path)


def _spec(args: argparse.Namespace) -> tuple[dict[str, Any], overlay_options.OverlayOptions, bool]:
    opts = overlay_options.parse(args.options)
    mountpoint = _check_mountpoint(args.mountpoint)
    require_fuse()
    fuse, read_only = fuse_options(opts, args.source, args.debug)
    if args.debug and opts.ignored:
        print(f"{PROG}: ignoring options: {','.join(opts.ignored)}", file=sys.stderr)
    return {"mountpoint": mountpoint, "options": fuse}, opts, read_only


def _serve(
    spec: dict[str, Any], opts: overlay_options.OverlayOptions, read_only: bool, ready: Ready
) -> None:
    def build() -> TreeFS:
        return stack.build(opts, read_only)

    serve(spec["mountpoint"], spec["options"], ready, build)


def _foreground(spec: dict[str, Any], opts: overlay_options.OverlayOptions, read_only: bool) -> int:
    failure: list[FsnapError] = []

    def ready(error: FsnapError | None) -> None:
        if error is not None:
            failure.append(error)

    _serve(spec, opts, read_only, ready)
    if failure:
        raise failure[0]
    return 0


def _daemonise(spec: dict[str, Any], opts: overlay_options.OverlayOptions, read_only: bool) -> int:
    """Fork a session leader that mounts and serves; return once it says the mount is live.

    The child is forked before any trio loop or thread exists, and reports on a pipe:
    ``ok``, or ``error <exit code> <message>`` (``fsnap.mount.daemon.pipe_reporter``)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _become_daemon()
        code = 0
        try:
            _serve(spec, opts, read_only, pipe_reporter(write_end))
        except BaseException:  # noqa: BLE001 (a daemon has nobody to show a traceback to)
            code = 1
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        line = pipe.readline().decode(errors="replace").strip()
    if line == "ok":
        return 0
    _, _, rest = line.partition(" ")
    code_text, _, message = rest.partition(" ")
    os.waitpid(pid, 0)
    if not line:
        raise Unavailable(f"the {PROG} daemon exited before mounting")
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return int(code_text) if code_text.isdigit() else 1


def _become_daemon() -> None:
    """A new session, away from the caller's terminal and working directory."""
    os.setsid()
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else list(argv))

    def command() -> int:
        spec, opts, read_only = _spec(args)
        if args.foreground or args.debug:
            return _foreground(spec, opts, read_only)
        return _daemonise(spec, opts, read_only)

    return guarded(PROG, command)


def run() -> None:
    sys.exit(main())
