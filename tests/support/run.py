"""``fsnap run`` tests: busybox images with a runtime config, pushed and pulled for real;
the ``fsnap`` CLI in a child process; every run, mount and runc container of a test's
fsnap root cleaned up after it, whatever happened."""

from __future__ import annotations

import contextlib
import json
import subprocess
import tarfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from image_builder import BUSYBOX_APPLETS, Image, busybox_members, make_image, make_layer, tar_info

from fsnap.client import Client
from fsnap.mount import records
from fsnap.run import session, state
from fsnap.run.runtime import Runc, runc_binary
from support.cli import fsnap, succeeded
from support.mount import cleanup
from support.registry import RegistryProcess

APPLETS = (
    "sleep",
    "grep",
    "hostname",
    "pwd",
    "touch",
    "readlink",
    "tty",
    "test",
    "kill",
    "printf",
    "head",
    "wc",
    "trap",
    "stty",
    "cut",
)
PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "app:x:1000:1001:App:/home/app:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\napp:x:1001:\nextra:x:3000:app\nnogroup:x:65534:\n"


def busybox_run_image(
    config: Mapping[str, Any],
    files: Mapping[str, bytes] | None = None,
) -> Image:
    """busybox-static with more applets, users and groups, /sys, and ``config``; ``files``
    are added (executable under bin/)."""
    members = list(busybox_members())
    members.append((tar_info("sys", tarfile.DIRTYPE, mode=0o755), None))
    for applet in APPLETS:
        if applet not in BUSYBOX_APPLETS:
            members.append((tar_info(f"bin/{applet}", tarfile.SYMTYPE, linkname="busybox"), None))
    all_files = {"etc/passwd": PASSWD.encode(), "etc/group": GROUP.encode(), **(files or {})}
    for path, data in all_files.items():
        mode = 0o755 if path.startswith("bin/") else 0o644
        members.append((tar_info(path, size=len(data), mode=mode), data))
    return make_image([make_layer(members)], config=dict(config))


def pushed(registry: RegistryProcess, repo: str, image: Image) -> str:
    registry.push_image(repo, "1", image)
    return f"{registry.host}/{repo}:1"


def run_ok(root: Path, *args: str, stdin: str | None = None) -> str:
    """``fsnap run ARGS`` that must exit 0; its stdout."""
    return succeeded(fsnap(root, "run", *args, stdin=stdin))


def active_snapshots(root: Path) -> list[str]:
    with Client(root) as client:
        return [i.name for i in client.snapshots.walk(["kind==active"])]


def leftovers(root: Path) -> list[str]:
    """What a finished run must not leave: run records, mounts, bundles, runc containers."""
    found = [str(p) for p in (root / "runs").glob("*")] if (root / "runs").exists() else []
    found += (
        [str(p) for p in (root / "mounts").glob("*.json")] if (root / "mounts").exists() else []
    )
    found += [
        p
        for p in records.mounted_points()
        if "/fsnap-" in p and p.endswith("/rootfs") and _run_of(root, p)
    ]
    return found


def _run_of(root: Path, mountpoint: str) -> bool:
    ident = Path(mountpoint).parent.name
    return (root / "runs" / f"{ident}.json").exists()


@contextlib.contextmanager
def cleaned(root: Path) -> Iterator[Path]:
    """Yield ``root``; after, end every run recorded there (runc container, mount, bundle)
    and every mount of it, also when the test failed."""
    try:
        yield root
    finally:
        _clean(root)


def _clean(root: Path) -> None:
    if not root.exists():
        return
    infos: list[records.MountInfo] = []
    with contextlib.suppress(Exception), Client(root) as client:
        for record in state.load_all(client):
            with contextlib.suppress(Exception):
                Runc(Path(record.runc_state), Path(record.bundle) / "runc.log").delete(record.id)
        infos = client.mounts()
    for info in infos:
        cleanup(root, Path(info.mountpoint), info.pid)
    with contextlib.suppress(Exception), Client(root) as client:
        for record in state.load_all(client):
            with contextlib.suppress(Exception):
                session.cleanup(client, record)


def runc_pid(root: Path) -> int:
    """The container process of the one run recorded under ``root`` (0 if none yet)."""
    with Client(root) as client:
        records = state.load_all(client)
    if not records:
        return 0
    record = records[0]
    argv = [runc_binary(), "--root", record.runc_state, "state", record.id]  # not its log
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return 0
    info = json.loads(done.stdout)
    return int(info["pid"]) if info.get("status") == "running" else 0


def env_of(output: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


def status_ids(output: str) -> dict[str, str]:
    """Uid/Gid/Groups lines of /proc/self/status."""
    wanted = ("Uid", "Gid", "Groups")
    return {
        k: " ".join(v.split())
        for k, _, v in (line.partition(":") for line in output.splitlines())
        if k in wanted
    }
