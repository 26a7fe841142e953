"""``fsnap run`` of hostile images, for real (runc, the FUSE daemon, a real registry): an
image config or an /etc/passwd built to break the run or reach outside the image.

Each image either runs as containerd would run it, or is refused before runc starts, in one
typed line (exit 4) that names the field, leaving no run, mount or snapshot behind; and
nothing outside the image's root is created or read."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from image_builder import Image, make_image, make_layer, tar_info
from support.cli import fsnap
from support.image_mount import pulled
from support.registry import RegistryProcess
from support.run import (
    active_snapshots,
    busybox_run_image,
    cleaned,
    env_of,
    leftovers,
    pushed,
)

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_fuse]

Member = tuple[tarfile.TarInfo, bytes | None]
BASE = {"Cmd": ["/bin/sh", "-c", "id -u; pwd"], "Env": ["PATH=/bin"]}
# Host paths a hostile image names through symlinks (nothing may appear there).
OUTSIDE = Path("/tmp/fsnap-run-hostile-outside")


def _sym(name: str, target: str) -> Member:
    return (tar_info(name, tarfile.SYMTYPE, linkname=target), None)


def _file(name: str, data: bytes) -> Member:
    return (tar_info(name, size=len(data)), data)


def hostile_image(config: Mapping[str, Any], extra: Sequence[Member] = ()) -> Image:
    """``busybox_run_image(config)`` with ``extra`` members after its own (a later entry
    with the same path wins)."""
    base = busybox_run_image(config)
    members: list[Member] = []
    with tarfile.open(fileobj=io.BytesIO(base.layers[0].tar)) as tar:
        for info in tar.getmembers():
            stream = tar.extractfile(info) if info.isfile() else None
            members.append((info, stream.read() if stream else None))
    return make_image([make_layer([*members, *extra])], config=dict(config))


# name -> (config, extra members, expected stdout or None when refused, message if refused)
CASES: dict[str, tuple[dict[str, Any], list[Member], str | None, str]] = {
    # containerd: a bare NAME in Env unsets it, an empty entry is nothing (runc refused both)
    "env-bare-name-unsets": (
        {**BASE, "Env": ["PATH=/bin", "GONE=1", "GONE", "ALONE", ""], "Cmd": ["env"]},
        [],
        "",
        "",
    ),
    "env-nul": ({**BASE, "Env": ["PATH=/bin", "A=x\0y"]}, [], None, "Env entry 'A=x\\x00y'"),
    "env-empty-name": (
        {**BASE, "Env": ["PATH=/bin", "=x"]},
        [],
        None,
        "Env entry '=x' has no name",
    ),
    "env-too-long": ({**BASE, "Env": ["PATH=/bin", "BIG=" + "x" * 200_000]}, [], None, "execve"),
    "cmd-nul": (
        {**BASE, "Cmd": ["/bin/echo", "a\0b"]},
        [],
        None,
        "Cmd entry 'a\\x00b' contains a NUL",
    ),
    "entrypoint-too-long": (
        {**BASE, "Entrypoint": ["/bin/echo", "y" * 140_000]},
        [],
        None,
        "Entrypoint entry",
    ),
    "workdir-nul": ({**BASE, "WorkingDir": "/a\0b"}, [], None, "WorkingDir '/a\\x00b'"),
    "workdir-long-name": (
        {**BASE, "WorkingDir": "/" + "n" * 300},
        [],
        None,
        "longer than the kernel takes",
    ),
    "workdir-long-path": (
        {**BASE, "WorkingDir": "/d" * 2100},
        [],
        None,
        "longer than the kernel takes",
    ),
    "env-thousands": (
        {**BASE, "Env": ["PATH=/bin"] + [f"V{i}={'v' * 50}" for i in range(3000)]},
        [],
        "0\n/\n",
        "",
    ),
    # what holds: resolved inside the image, relative to /, never outside it
    "workdir-relative-dotdot": ({**BASE, "WorkingDir": "../../srv/../w"}, [], "0\n/w\n", ""),
    "workdir-symlink-out": (
        {**BASE, "WorkingDir": "/out/sub"},
        [_sym("out", str(OUTSIDE))],
        f"0\n{OUTSIDE}/sub\n",  # (the link resolved inside the image)
        "",
    ),
    "workdir-a-file": ({**BASE, "WorkingDir": "/etc/passwd"}, [], None, "not a directory"),
    "hostname-a-directory": (
        BASE,
        [(tar_info("etc/hostname", tarfile.DIRTYPE, mode=0o755), None)],
        None,
        "/etc/hostname is a directory in the image: a file cannot be mounted on it",
    ),
    "passwd-symlink-to-host": (
        {**BASE, "User": "daemon"},
        [_sym("etc/passwd", "../../../../../../etc/passwd-")],  # (the host has it)
        None,
        "unable to find user daemon",
    ),
    "passwd-symlink-loop": (
        {**BASE, "User": "app"},
        [_sym("etc/passwd", "../../../../../../etc/passwd")],
        None,
        "/etc/passwd: too many levels of symbolic links in the image",
    ),
    "passwd-fifo": (
        {**BASE, "User": "app"},
        [(tar_info("etc/passwd", tarfile.FIFOTYPE), None)],
        None,
        "unable to find user app",
    ),
    "passwd-binary": (
        {**BASE, "User": "app"},
        [_file("etc/passwd", bytes(range(256)) * 64)],
        None,
        "unable to find user app",
    ),
    # a NUL in a passwd line: skipped, not a HOME runc refuses
    "passwd-nul-home": (
        {**BASE, "User": "1000", "Cmd": ["env"]},
        [_file("etc/passwd", b"app:x:1000:1000::/home\0x:/bin/sh\n")],
        "",
        "",
    ),
    "user-group-dotdot": ({**BASE, "User": "root:../x"}, [], None, "unable to find group ../x"),
    "user-uid-out-of-range": ({**BASE, "User": "4294967296"}, [], None, "uid 4294967296 is out of"),
    "user-uid-largest": ({**BASE, "User": "2147483647"}, [], "2147483647\n/\n", ""),
    "stop-signal-0": ({**BASE, "StopSignal": "0"}, [], None, "StopSignal '0' is not a signal"),
    "stop-signal-99999": ({**BASE, "StopSignal": "99999"}, [], None, "StopSignal '99999' is not"),
    "no-command": ({"Entrypoint": None, "Cmd": [], "Env": ["PATH=/bin"]}, [], None, "no command"),
    "odd-volumes-and-ports": (
        {**BASE, "Volumes": {"../../x": {}, "": None}, "ExposedPorts": {"99999/xyz": []}},
        [],
        "0\n/\n",
        "",
    ),
}


# Bundle files (/etc/hosts, /etc/resolv.conf, /etc/hostname) whose image path is a symlink
# into what runc mounts (/proc's magic links to the host's root, /sys, /dev): runc resolves
# the target inside the root (SecureJoin) and refuses or binds inside the container.
RUNC_CONTAINED = {
    "hosts-to-proc-root": [_sym("etc/hosts", "/proc/self/root/etc/hosts")],
    "hosts-to-pid1-root": [_sym("etc/hosts", "../proc/1/root/etc/hosts")],
    "resolv-to-sys": [_sym("etc/resolv.conf", "/sys/kernel/x")],
    "hostname-to-dev": [_sym("etc/hostname", "/dev/shm/hn")],
}


@pytest.fixture(scope="module")
def hostile(
    registry: RegistryProcess, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("hostile") / "root"
    refs = {}
    for name, (config, extra, _, _) in CASES.items():
        refs[name] = pushed(registry, f"run-hostile/{name}", hostile_image(config, extra))
        pulled(root, refs[name])
    for name, extra in RUNC_CONTAINED.items():
        refs[name] = pushed(registry, f"run-hostile/{name}", hostile_image(BASE, extra))
        pulled(root, refs[name])
    return root, refs


@pytest.fixture
def root(hostile: tuple[Path, dict[str, str]]) -> Iterator[Path]:
    pulled_root = hostile[0]
    before = active_snapshots(pulled_root)
    with cleaned(pulled_root):
        yield pulled_root
        assert leftovers(pulled_root) == []
        assert active_snapshots(pulled_root) == before
    assert not OUTSIDE.exists()


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_image_config(root: Path, hostile: tuple[Path, dict[str, str]], case: str) -> None:
    config, _, expected, message = CASES[case]
    done = fsnap(root, "run", "--rm", hostile[1][case])
    if expected is None:
        assert done.returncode == 4, done.stderr
        assert message in done.stderr
        assert "Traceback" not in done.stderr
        assert [line for line in done.stderr.splitlines() if "error" in line] == [
            next(line for line in done.stderr.splitlines() if message in line)
        ]
        return
    assert done.returncode == 0, done.stderr
    if config.get("Cmd") == ["env"]:
        env = env_of(done.stdout)
        assert "GONE" not in env
        assert "ALONE" not in env
        assert "\0" not in done.stdout
        assert env["PATH"] == "/bin"
        return
    assert done.stdout == expected


@pytest.mark.parametrize("case", list(RUNC_CONTAINED))
def test_bundle_file_symlinked_into_runcs_mounts(
    root: Path, hostile: tuple[Path, dict[str, str]], case: str
) -> None:
    """Holds: the run fails in runc (125) or runs, and the host's files stay as they were."""
    host_files = {p: Path(p).read_bytes() for p in ("/etc/hosts", "/etc/hostname")}
    done = fsnap(root, "run", "--rm", hostile[1][case])
    assert done.returncode in (0, 125), done.stderr
    assert "Traceback" not in done.stderr
    assert {p: Path(p).read_bytes() for p in host_files} == host_files
