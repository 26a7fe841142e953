"""``fsnap info``: every check against the real machine, and against machines made to
answer differently (a store on tmpfs, an unopenable /dev/fuse, no fusermount3, user
namespaces limited to 0, registry configuration present)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from support.cli import FSNAP, NOBODY, fsnap
from support.env import as_nobody_with_fuse_mode, tmpfs
from support.rw import shared_dir

from fsnap.info import fuse, kernel, registry, report, store, userns


def findmnt_fstype(path: Path) -> str:
    done = subprocess.run(
        ["findmnt", "-n", "-o", "FSTYPE", "--target", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def test_store_on_the_test_disk_has_every_fast_path(tmp_path: Path) -> None:
    info = store.probe_store(tmp_path / "root")
    assert info.probed == str(tmp_path)  # the root does not exist yet: its parent is probed
    assert info.fstype == findmnt_fstype(tmp_path)
    usage = os.statvfs(tmp_path)
    assert info.size == usage.f_blocks * usage.f_frsize
    if info.fstype in ("ext4", "xfs", "btrfs"):  # what the project's machines run on
        assert (info.rwf_nowait.available, info.o_noatime.available) == (True, True)
        assert (info.user_xattrs.available, info.d_type.available) == (True, True)
    assert os.listdir(tmp_path) == []  # the probe's scratch files are gone


def test_store_on_tmpfs_has_no_rwf_nowait(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "t", "8m") as mounted:
        (mounted / "root").mkdir()
        info = store.probe_store(mounted / "root")
        assert info.probed == str(mounted / "root")
        assert info.fstype == "tmpfs"
        assert info.size == 8 << 20
        assert info.rwf_nowait.available is False
        assert "ENOTSUP" in info.rwf_nowait.detail or "EOPNOTSUPP" in info.rwf_nowait.detail
        assert info.d_type.available is True  # tmpfs fills d_type in
        assert os.listdir(mounted / "root") == []


def test_store_not_writable_is_unknown_not_an_error(tmp_path: Path) -> None:
    with shared_dir() as shared:
        done = fsnap(
            shared / "root", "info", "--json", uid=NOBODY, env=os.environ, cwd="/", timeout=60
        )
    assert done.returncode == 0, done.stderr
    probe = json.loads(done.stdout)["store"]["rwf_nowait"]
    assert probe["available"] is None
    assert "EACCES" in probe["detail"]


@pytest.mark.parametrize(("mode", "usable"), [(0o600, False), (0o666, True)])
def test_dev_fuse_as_seen_by_uid_65534(tmp_path: Path, mode: int, usable: bool) -> None:
    done = as_nobody_with_fuse_mode(
        mode, tmp_path / "dev", str(FSNAP), "--root", "/nonexistent", "info", "--json"
    )
    assert done.returncode == 0, done.stderr
    device = json.loads(done.stdout)["fuse"]["device"]
    assert device["available"] is usable
    if not usable:
        assert device["detail"] == (
            f"/dev/fuse is not accessible to uid 65534 (mode {mode:04o}): ask an administrator "
            "to make it 0666 (Debian's default) or run as root"
        )


def test_dev_fuse_for_root_and_fusermount3_version() -> None:
    info = fuse.probe_fuse()
    assert info.device.available is True
    expected = subprocess.run(["fusermount3", "--version"], capture_output=True, text=True)
    assert info.fusermount3.version == (expected.stdout + expected.stderr).strip().splitlines()[0]


def test_fusermount3_missing(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    done = fsnap(tmp_path / "root", "info", "--json", env={**os.environ, "PATH": str(empty)})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["fuse"]["fusermount3"] == {
        "name": "fusermount3",
        "path": None,
        "version": None,
    }


def _config_value(name: str) -> str | None:
    if not Path("/proc/config.gz").exists():
        return None
    text = subprocess.run(["zcat", "/proc/config.gz"], capture_output=True, text=True).stdout
    for line in text.splitlines():
        if line.startswith(f"{name}="):
            return line.split("=", 1)[1]
    return "absent"


def test_kernel_and_fuse_features_match_the_kernel_configuration() -> None:
    info = kernel.probe_kernel()
    assert info.release == os.uname().release
    assert "fuse" in info.filesystems
    assert info.overlayfs.available == ("overlay" in Path("/proc/filesystems").read_text())
    features = fuse.probe_fuse()
    passthrough = _config_value("CONFIG_FUSE_PASSTHROUGH")
    if passthrough is None and not Path(f"/boot/config-{os.uname().release}").exists():
        assert features.passthrough.available is None  # said honestly, not guessed
    else:
        assert features.passthrough.available is (passthrough == "y")
    if Path("/sys/module/fuse/parameters/enable_uring").exists():
        assert features.io_uring.available is True


def test_user_namespaces_allowed_here() -> None:
    info = userns.probe_userns()
    limit = Path("/proc/sys/user/max_user_namespaces").read_text().strip()
    assert info.max_user_namespaces == limit
    assert info.unshare.available is True
    userns.require_user_namespaces()


_LIMITED = """
echo 0 > /proc/sys/user/max_user_namespaces
exec "$@"
"""


def test_user_namespaces_limited_to_zero() -> None:
    """In a user namespace whose limit is 0 (a per-namespace sysctl: the host's stays)."""
    command = [
        "unshare",
        "--user",
        "--map-root-user",
        "sh",
        "-c",
        _LIMITED,
        "sh",
        str(FSNAP),
        "--root",
        "/nonexistent",
        "info",
        "--json",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)["user_namespaces"]
    assert found["max_user_namespaces"] == "0"
    assert found["unshare"]["available"] is False


def test_runtimes_are_found_with_their_versions() -> None:
    tools = {tool.name: tool for tool in report.collect(Path("/nonexistent")).runtimes}
    for name in ("runc", "containerd", "ctr-remote"):
        path = subprocess.run(["sh", "-c", f"command -v {name}"], capture_output=True, text=True)
        assert tools[name].path == (path.stdout.strip() or None)
    runc = subprocess.run(["runc", "--version"], capture_output=True, text=True)
    assert tools["runc"].version == runc.stdout.splitlines()[0]


def test_registry_configuration_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "config.json").write_text("{}")
    certs = tmp_path / "certs.d"
    (certs / "registry.example:5000").mkdir(parents=True)
    (certs / "registry.example:5000" / "hosts.toml").write_text('server = "https://x"\n')
    (certs / "not-a-host").mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    found = registry.probe_registry_config((str(certs), str(tmp_path / "absent")))
    assert found.docker_config == str(tmp_path / "docker" / "config.json")
    assert found.docker_config_state == "present"
    assert [(d.exists, d.hosts) for d in found.hosts_dirs] == [
        (True, ["registry.example:5000"]),
        (False, []),
    ]


def test_fsnap_info_text_and_json(tmp_path: Path) -> None:
    text = fsnap(tmp_path / "root", "info")
    assert text.returncode == 0, text.stderr
    for line in (
        "store:",
        f"  path: {tmp_path / 'root'} (not created yet; probed {tmp_path})",
        "  RWF_NOWAIT reads: ",
        "  /dev/fuse: yes",
        "  fusermount3: ",
        "  unshare --user: yes",
        "  runc: ",
        "  hosts.toml dirs: /etc/fsnap/certs.d",
    ):
        assert line in text.stdout, text.stdout
    data = json.loads(fsnap(tmp_path / "root", "info", "--json").stdout)
    assert data["store"]["fstype"] == findmnt_fstype(tmp_path)
    assert data["version"]
    assert data["kernel"]["release"] == os.uname().release
    assert not (tmp_path / "root").exists()  # info creates nothing
