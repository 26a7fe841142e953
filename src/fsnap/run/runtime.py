"""runc, driven in the foreground: ``runc run`` with fsnap's standard input, output and
error, signals forwarded, its exit status returned; ``runc delete`` after.

Job control: runc runs in a process group of its own. When fsnap owns the terminal, that
group becomes the terminal's foreground group (as a shell does for a job), so Ctrl-C and
Ctrl-Z reach the container once, through runc, and not fsnap; signals sent to fsnap itself
(``kill``) are forwarded to runc, which forwards them to the container's process. SIGTERM
becomes the image's ``StopSignal``. With ``-t`` runc allocates the container's terminal and
relays it over fsnap's (raw mode); without, the container's process inherits fsnap's file
descriptors directly: nothing in between buffers.

runc logs its own failures (JSON, ``--log``): ``failure`` reads the last one, so an error
before the container's process starts is told from the process's own exit status.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from fsnap.errors import ToolMissing, Unavailable

RUNC = "runc"
FORWARDED = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
DELETE_TIMEOUT = 30.0


@functools.cache
def runc_binary() -> str:
    """runc's path (Debian installs it in /usr/sbin, which a user's PATH may lack)."""
    found = shutil.which(RUNC) or next(
        (p for p in ("/usr/sbin/runc", "/usr/bin/runc") if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise ToolMissing("runc not found: install runc (scripts/setup does)")
    return found


@dataclass(frozen=True)
class Runc:
    """One runc state directory (``--root``) and the log of one container."""

    state: Path
    log: Path

    def argv(self, *args: str) -> list[str]:
        return [
            runc_binary(),
            "--root",
            str(self.state),
            "--log",
            str(self.log),
            "--log-format",
            "json",
            *args,
        ]

    def run(self, ident: str, bundle: Path, *, stdin: bool, stop_signal: int) -> int:
        """``runc run`` in the foreground until the container's process exits; its status
        (128 + N for a process killed by signal N, as runc reports it)."""
        argv = self.argv("run", "--bundle", str(bundle), ident)
        terminal = _foreground_terminal()
        proc = subprocess.Popen(
            argv,
            stdin=None if stdin else subprocess.DEVNULL,
            preexec_fn=lambda: _own_group(terminal),  # noqa: PLW1509 (no threads here)
        )
        try:
            with _forwarding(proc.pid, stop_signal):
                status = proc.wait()
        finally:
            if terminal:
                _take_terminal_back()
        return status if status >= 0 else 128 - status

    def delete(self, ident: str) -> None:
        """Forget the container (killing its processes if any are left); no error when runc
        never created it or already removed it."""
        done = subprocess.run(
            self.argv("delete", "--force", ident),
            capture_output=True,
            text=True,
            timeout=DELETE_TIMEOUT,
            check=False,
        )
        if done.returncode != 0 and "does not exist" not in done.stderr:
            raise Unavailable(f"runc delete {ident}: {done.stderr.strip()}")

    def failure(self) -> str:
        """runc's last error message in the log ("" when it logged none)."""
        message = ""
        with contextlib.suppress(OSError):
            for line in self.log.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError, AttributeError):
                    record = json.loads(line)
                    if record.get("level") in ("error", "fatal"):
                        message = str(record.get("msg", ""))
        return message


def _foreground_terminal() -> bool:
    """Whether fsnap is the foreground job of its controlling terminal."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)


def _own_group(terminal: bool) -> None:
    """In the child before exec: a process group of its own, the terminal's foreground."""
    os.setpgid(0, 0)
    if terminal:
        _set_foreground(os.getpgrp())


def _take_terminal_back() -> None:
    with contextlib.suppress(OSError):
        _set_foreground(os.getpgrp())


def _set_foreground(pgrp: int) -> None:
    """tcsetpgrp from a background group: SIGTTOU ignored meanwhile (it would stop us)."""
    old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_CLOEXEC)
        try:
            os.tcsetpgrp(fd, pgrp)
        finally:
            os.close(fd)
    finally:
        signal.signal(signal.SIGTTOU, old)


@contextlib.contextmanager
def _forwarding(pid: int, stop_signal: int) -> Iterator[None]:
    """Forward FORWARDED signals sent to fsnap to ``pid`` (SIGTERM as ``stop_signal``)."""

    def forward(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, stop_signal if signum == signal.SIGTERM else signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
