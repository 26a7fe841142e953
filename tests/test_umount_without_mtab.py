"""``fsnap umount`` on a system without /etc/mtab (minimal images, containers, chroots).

The scenario runs in a private mount and pid namespace (``unshare``) whose /etc is an
overlay of the host's with a whiteout for ``mtab``: the host is never changed, and every
process and mount of the scenario ends with the namespace, also when it fails.

As root, fsnap unmounts as usual. As uid 65534, fusermount3 can only check the mount's
owner in /etc/mtab: fsnap says so in one line with the fix (exit 5) and leaves the mount
served; once the standard link exists, the same ``fsnap umount`` succeeds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from support.env import TESTS
from support.rw import shared_dir

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_fuse]


# pid 1 of the namespace: hide /etc/mtab, then run the scenario.
_HIDE_MTAB = r"""
set -euo pipefail
work=$1; shift
mkdir "$work/etc-upper" "$work/etc-work"
mknod "$work/etc-upper/mtab" c 0 0
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$work/etc-upper,workdir=$work/etc-work" /etc
if [ -e /etc/mtab ] || [ -L /etc/mtab ]; then echo "/etc/mtab still there" >&2; exit 1; fi
exec "$@"
"""

_SCENARIO = r"""
import json, os, subprocess, sys, time
from pathlib import Path
from fsnap.client import Client
from fsnap.mount.records import mounted_points
from support.cli import NOBODY
from support.rw import make_image

base = Path(sys.argv[1])
FSNAP = [sys.executable, "-c", "from fsnap.cli import run; run()"]
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
seen = {}

def fsnap(root, *args, user=()):
    done = subprocess.run([*user, *FSNAP, "--root", str(root), *args], capture_output=True,
                          text=True, timeout=120, cwd="/", env={**os.environ, "HOME": "/"})
    return {"code": done.returncode, "stderr": done.stderr}

def fresh(name, owner):
    path = base / name
    path.mkdir()
    os.chown(path, owner, owner)
    return path

# root: a detached daemon, unmounted without /etc/mtab
root, mnt = fresh("root", 0), fresh("mnt", 0)
top = make_image(root)
with Client(root) as client:
    client.snapshots.prepare("rw", top)
seen["root_mount"] = fsnap(root, "snapshots", "mount", "rw", str(mnt))
seen["root_mounted"] = str(mnt) in mounted_points()
seen["root_umount"] = fsnap(root, "umount", str(mnt))
seen["root_mounted_after"] = str(mnt) in mounted_points()

# uid 65534: its own daemon (in the foreground: this Python is root's venv)
root, mnt = fresh("nobody-root", NOBODY), fresh("nobody-mnt", NOBODY)
build = "import sys; from pathlib import Path; from fsnap.client import Client; " \
        "from support.rw import make_image; top = make_image(Path(sys.argv[1])); " \
        "c = Client(Path(sys.argv[1])); c.snapshots.prepare('rw', top); c.close()"
subprocess.run([*AS_NOBODY, sys.executable, "-c", build, str(root)], check=True, cwd="/")
daemon = subprocess.Popen(
    [*AS_NOBODY, *FSNAP, "--root", str(root), "snapshots", "mount", "--foreground", "rw",
     str(mnt)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
seen["nobody_serving"] = daemon.stdout.readline()
seen["nobody_umount"] = fsnap(root, "umount", str(mnt), user=AS_NOBODY)
seen["nobody_still_mounted"] = str(mnt) in mounted_points()
seen["nobody_still_serving"] = daemon.poll() is None
os.symlink("../proc/self/mounts", "/etc/mtab")  # what scripts/setup creates
seen["nobody_umount_with_link"] = fsnap(root, "umount", str(mnt), user=AS_NOBODY)
seen["nobody_daemon_exit"] = daemon.wait(timeout=60)
seen["nobody_mounted_after"] = str(mnt) in mounted_points()
print(json.dumps(seen))
"""


def fuse_device_mode(mode: int | None) -> int:
    """Set /dev/fuse's mode (when ``mode`` is given); return the one it had. Debian's udev
    leaves it 0666 (a user's daemon opens it); container machines create it 0600."""
    before = os.stat("/dev/fuse").st_mode & 0o7777
    if mode is not None:
        os.chmod("/dev/fuse", mode)
    return before


def test_umount_without_etc_mtab_as_root_and_as_nobody() -> None:
    before = fuse_device_mode(0o666)
    try:
        with shared_dir() as base:
            done = subprocess.run(
                [
                    "unshare",
                    "--mount",
                    "--pid",
                    "--fork",
                    "--kill-child",
                    "--mount-proc",
                    "--propagation",
                    "private",
                    "bash",
                    "-c",
                    _HIDE_MTAB,
                    "hide-mtab",
                    str(base),
                    sys.executable,
                    "-c",
                    _SCENARIO,
                    str(base),
                ],
                capture_output=True,
                text=True,
                timeout=300,
                env={**os.environ, "PYTHONPATH": TESTS},
            )
    finally:
        fuse_device_mode(before)
    assert done.returncode == 0, done.stdout + done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])

    assert seen["root_mount"]["code"] == 0, seen["root_mount"]
    assert seen["root_mounted"]
    assert seen["root_umount"] == {"code": 0, "stderr": ""}
    assert not seen["root_mounted_after"]

    assert "serving" in seen["nobody_serving"], seen
    refused = seen["nobody_umount"]
    assert refused["code"] == 5, refused
    lines = refused["stderr"].splitlines()
    assert len(lines) == 1, refused
    assert "Traceback" not in refused["stderr"], refused
    assert "/etc/mtab" in lines[0]
    assert "ln -s ../proc/self/mounts /etc/mtab" in lines[0]
    assert seen["nobody_still_mounted"]
    assert seen["nobody_still_serving"]
    assert seen["nobody_umount_with_link"] == {"code": 0, "stderr": ""}
    assert seen["nobody_daemon_exit"] == 0
    assert not seen["nobody_mounted_after"]
