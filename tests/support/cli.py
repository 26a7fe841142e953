"""Running the real ``fsnap`` CLI in a child process, as a user runs it.

The one runner every test uses: it never raises on a failing command (tests look at the
exit code and stderr themselves), and a child that hangs is made to dump its threads'
stacks (faulthandler on, SIGABRT at the timeout) so that the test fails saying where."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, overload

FSNAP = Path(sys.executable).with_name("fsnap")
NOBODY = 65534


def as_user(uid: int) -> list[str]:
    """The argv prefix that runs a command as ``uid``, with that gid and no groups."""
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]


def minimal_env(home: Path | str) -> dict[str, str]:
    """The environment of a command run as another user: PATH and a HOME it may read."""
    return {"PATH": "/usr/bin:/bin", "HOME": str(home)}


def argv(root: Path | None, *args: str) -> list[str]:
    """``fsnap [--root ROOT] ARGS`` as an argv."""
    return [str(FSNAP), *(["--root", str(root)] if root is not None else []), *args]


@overload
def fsnap(
    root: Path | None,
    *args: str,
    text: Literal[True] = True,
    stdin: str | None = None,
    env: Mapping[str, str] | None = None,
    uid: int | None = None,
    cwd: Path | str | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]: ...


@overload
def fsnap(
    root: Path | None,
    *args: str,
    text: Literal[False],
    stdin: bytes | None = None,
    env: Mapping[str, str] | None = None,
    uid: int | None = None,
    cwd: Path | str | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[bytes]: ...


def fsnap(
    root: Path | None,
    *args: str,
    text: bool = True,
    stdin: str | bytes | None = None,
    env: Mapping[str, str] | None = None,
    uid: int | None = None,
    cwd: Path | str | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str] | subprocess.CompletedProcess[bytes]:
    """Run ``fsnap [--root ROOT] ARGS`` and return what it did.

    ``root`` None leaves ``--root`` out. ``stdin`` is piped in (else /dev/null). ``env`` is
    the child's whole environment (default: this process's, or ``minimal_env(root)`` with
    ``uid``). ``uid`` runs it through setpriv as that user; ``cwd`` is its directory.
    ``text`` False keeps stdout and stderr as bytes."""
    command = [*(as_user(uid) if uid is not None else []), *argv(root, *args)]
    if env is None:
        env = os.environ if uid is None else minimal_env(root or "/")
    environ = {**env, "PYTHONFAULTHANDLER": "1"}
    with subprocess.Popen(
        command,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=text,
        env=environ,
        cwd=cwd,
    ) as child:
        try:
            out, err = child.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGABRT)
            out, err = child.communicate()
            shown = err if isinstance(err, str) else err.decode(errors="replace")
            raise AssertionError(f"fsnap {' '.join(args)} hung:\n{shown}") from None
    return subprocess.CompletedProcess(command, child.returncode, out, err)


def succeeded(done: subprocess.CompletedProcess[str]) -> str:
    """The stdout of a command that must have worked (exit 0, no traceback on stderr); its
    argv, exit code and output when it did not."""
    assert done.returncode == 0, f"{done.args} -> {done.returncode}\n{done.stdout}{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout


def start(root: Path, *args: str) -> subprocess.Popen[bytes]:
    """``fsnap --root ROOT ARGS`` in the background, stdout and stderr piped; the caller
    waits for it (or kills it)."""
    return subprocess.Popen(argv(root, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
