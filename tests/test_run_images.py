"""``fsnap run`` beyond busybox as root: Debian's python3 writing a file that a commit keeps,
and a rootless run as uid 65534 (a user namespace mapping it to root, owners shifted on
its FUSE mount)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cli import NOBODY, fsnap, succeeded
from support.image_mount import pulled
from support.registry import RegistryProcess
from support.run import busybox_run_image, cleaned, leftovers, pushed, run_ok
from support.rw import shared_dir
from test_mount_python import python_image, system_python
from test_rw_unprivileged import fuse_device_for_users  # noqa: F401 (a fixture)

from fsnap.client import Client

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_fuse]

WRITE = "open('/made-by-python.txt', 'w').write('written by ' + __import__('sys').version)"
READ = "print(open('/made-by-python.txt').read())"


def test_python_writes_a_file_that_commit_keeps(registry: RegistryProcess, tmp_path: Path) -> None:
    python = system_python()[0]
    assert python.exists(), f"{python} missing: scripts/setup installs Debian's python3"
    ref = pushed(registry, "run/python", python_image())
    new = f"{registry.host}/run/python-committed:1"
    with cleaned(tmp_path / "root") as root:
        pulled(root, ref)
        run_ok(root, "--rm", "--commit", new, ref, "python3", "-c", WRITE)
        out = run_ok(root, "--rm", new, "python3", "-c", READ)
        assert out.startswith("written by 3.")
        changes = succeeded(fsnap(root, "diff", new, "--layer", "3"))
        assert "/made-by-python.txt" in changes
        for target in ("/proc", "/sys", "/dev", "/etc/hosts"):  # made for runc, then removed
            assert f" {target} " not in changes
        assert leftovers(root) == []


@pytest.fixture
def nobody_root() -> Iterator[Path]:
    """An fsnap root owned by 65534 in a directory it can reach."""
    with shared_dir() as shared:
        root = shared / "root"
        root.mkdir()
        subprocess.run(["chown", f"{NOBODY}:{NOBODY}", str(root)], check=True)
        with cleaned(root):
            yield root


def _user_namespaces_for(uid: int) -> str:
    """ "" if ``uid`` may create a user namespace here, else why not."""
    done = subprocess.run(
        [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={uid}",
            "--clear-groups",
            "unshare",
            "--user",
            "--map-root-user",
            "true",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return "" if done.returncode == 0 else done.stderr.strip()


@pytest.fixture
def rootless(
    fuse_device_for_users: None,  # noqa: F811
    nobody_root: Path,
    registry: RegistryProcess,
    request: pytest.FixtureRequest,
) -> tuple[Path, str]:
    """(fsnap root of 65534, a busybox image 65534 pulled into it); skipped, with the
    kernel's reason, where 65534 may not create user namespaces."""
    reason = _user_namespaces_for(NOBODY)
    if reason:
        pytest.skip(f"uid {NOBODY} may not create user namespaces here: {reason}")
    image = busybox_run_image({"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]})
    ref = pushed(registry, f"run/{request.node.name}", image)
    pulled(nobody_root, ref, uid=NOBODY)
    return nobody_root, ref


def test_rootless_run_as_nobody(rootless: tuple[Path, str], registry: RegistryProcess) -> None:
    root, ref = rootless
    done = fsnap(
        root,
        "run",
        "--key",
        "mine",
        ref,
        "sh",
        "-c",
        "grep Uid /proc/self/status; cat /proc/self/uid_map; "
        "ls -ln /etc/passwd; echo y > /etc/written; id -u",
        uid=NOBODY,
    )
    out = succeeded(done)
    lines = out.splitlines()
    assert lines[0].split() == ["Uid:", "0", "0", "0", "0"]
    assert lines[1].split() == ["0", str(NOBODY), "1"]  # root inside is 65534 outside
    assert lines[2].split()[2:4] == ["0", "0"]  # the image's root files are root's inside
    assert lines[3] == "0"
    with Client(root) as client:
        index = {e.path: e for e in client.snapshots.index.read("mine")}
    assert (index["etc/written"].uid, index["etc/written"].gid) == (0, 0)
    new = f"{registry.host}/run/rootless-committed:1"
    succeeded(fsnap(root, "commit", "mine", new, uid=NOBODY))
    again = succeeded(fsnap(root, "run", "--rm", new, "cat", "/etc/written", uid=NOBODY))
    assert again == "y\n"
    succeeded(fsnap(root, "snapshots", "rm", "mine", uid=NOBODY))
    assert leftovers(root) == []


def test_rootless_other_users_are_refused(rootless: tuple[Path, str]) -> None:
    root, ref = rootless
    done = fsnap(root, "run", "--rm", "-u", "app", ref, "id", uid=NOBODY)
    assert done.returncode == 9
    assert "maps only container root" in done.stderr
    assert leftovers(root) == []
