"""The same POSIX operations on tmpfs and on a writable mount, as root and as uid 65534:
results and errnos must match, case by case (``posix_cases.py`` holds the cases and the
lower layer they start from). Each side starts from the same tree: the mount's comes from
a real layer tar, tmpfs's is made by hand with the same owners and modes."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import posix_cases
import pytest
from conftest import filesystem_at
from support.cli import NOBODY, as_user
from support.rw import make_image, mounted_rw, shared_dir
from support.tar import TarBuilder

from fsnap.client import Client

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_fuse]

SCRIPT = Path(posix_cases.__file__)
USERS = {"root": None, "uid65534": NOBODY}
# Where the mount may differ from tmpfs, and why (README, "Differences from a kernel fs").
ALLOWED: dict[str, list[object]] = {
    "tmpfile": [errno.errorcode[errno.EOPNOTSUPP]],  # pyfuse3 3.5 has no tmpfile operation
}


def layout() -> list[tuple[str, str, int, int, int, bytes]]:
    return sorted(posix_cases.LAYOUT, key=lambda row: row[0])


def layer_tar() -> bytes:
    builder = TarBuilder()
    for path, kind, mode, uid, gid, data in layout():
        if kind == "dir":
            builder.dir(path, mode, uid=uid, gid=gid)
        else:
            builder.file(path, data, mode, uid=uid, gid=gid)
    return builder.data()


def build_by_hand(base: Path) -> None:
    for path, kind, mode, uid, gid, data in layout():
        target = base / path
        if kind == "dir":
            target.mkdir(exist_ok=True)
        else:
            target.write_bytes(data)
        os.chown(target, uid, gid)
        os.chmod(target, mode)  # after chown, which clears setuid bits


def run_cases(directory: Path, uid: int | None) -> dict[str, Any]:
    command = [sys.executable, "-I", str(SCRIPT), str(directory)]
    if uid is not None:
        command = [*as_user(uid), *command]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=120, check=False, cwd="/"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@contextlib.contextmanager
def both_sides(base: Path, uid: int | None) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    with shared_dir() as shared:
        with filesystem_at("tmpfs", shared / "kernel") as kernel:
            os.chmod(kernel, 0o755)
            build_by_hand(kernel)
            want = run_cases(kernel, uid)
        root = base / "root"
        top = make_image(root, [layer_tar()])
        with Client(root) as client:
            client.snapshots.prepare("rw", top)
        with mounted_rw(root, "rw", shared / "mnt"):
            got = run_cases(shared / "mnt", uid)
        yield want, got


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """user -> (tmpfs results, mount results), each side run once per user."""
    found: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        for user, uid in USERS.items():
            found[user] = stack.enter_context(both_sides(tmp_path_factory.mktemp(user), uid))
        yield found


@pytest.mark.parametrize("user", list(USERS))
@pytest.mark.parametrize("name", list(posix_cases.CASES))
def test_same_as_tmpfs(results: dict[str, Any], name: str, user: str) -> None:
    want, got = results[user]
    assert name in want
    assert name in got
    if name in ALLOWED and got[name] == ALLOWED[name]:
        return
    assert got[name] == want[name], f"{name} as {user}: tmpfs {want[name]}, mount {got[name]}"
