"""``fsnap.run``'s pure parts without runc: the OCI spec, the process from an image config,
users from passwd/group text, command-line values. One test holds the spec's base against
the installed runc's own ``runc spec`` (and ``--rootless``)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from fsnap.errors import InvalidArgument
from fsnap.mount.idshift import IdShift
from fsnap.run import options, process, users
from fsnap.run.spec import (
    DEFAULT_CAPS,
    Layout,
    Process,
    User,
    Volume,
    build_spec,
    mount_targets,
    runc_default_spec,
    to_rootless,
)

PASSWD = """root:x:0:0:root:/root:/bin/sh
app:x:1000:1001:App:/home/app:/bin/sh
# a comment:x:1:1
broken line
svc:x:2000:2000::/srv:/bin/false
"""
GROUP = """root:x:0:
appgrp:x:1001:
extra:x:3000:app,svc
more:x:3001: app
wheel:x:10:root
"""


def runc_spec(tmp_path: Path, *flags: str) -> dict[str, object]:
    runc = shutil.which("runc") or "/usr/sbin/runc"
    subprocess.run([runc, "spec", *flags], cwd=tmp_path, check=True, capture_output=True)
    data: dict[str, object] = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").unlink()
    return data


def test_base_is_what_runc_spec_prints(tmp_path: Path) -> None:
    theirs = runc_spec(tmp_path)
    ours = runc_default_spec()
    assert {k: v for k, v in ours.items() if k != "ociVersion"} == {
        k: v for k, v in theirs.items() if k != "ociVersion"
    }


def test_to_rootless_is_what_runc_spec_rootless_prints(tmp_path: Path) -> None:
    theirs = runc_spec(tmp_path, "--rootless")
    ours = runc_default_spec()
    to_rootless(ours, 0, 0)  # runc maps the uid it runs as: root here
    for doc in (ours, theirs):
        doc.pop("ociVersion")
        linux = doc["linux"]
        assert isinstance(linux, dict)
        linux["namespaces"] = sorted(linux["namespaces"], key=lambda ns: ns["type"])
    assert ours == theirs


def layout(**kwargs: object) -> Layout:
    return Layout(**{"hostname": "box", "bundle": "/run/b", **kwargs})  # type: ignore[arg-type]


def proc(**kwargs: object) -> Process:
    return Process(
        **{
            "args": ("/bin/sh",),
            "env": ("PATH=/bin",),
            "cwd": "/",  # type: ignore[arg-type]
            "user": User(),
            **kwargs,
        }
    )


def test_spec_process_user_and_capabilities() -> None:
    spec = build_spec(proc(user=User(1000, 1001, (1001, 3000)), terminal=True), layout())
    assert spec["process"]["user"] == {"uid": 1000, "gid": 1001, "additionalGids": [1001, 3000]}
    assert spec["process"]["terminal"] is True
    assert spec["process"]["noNewPrivileges"] is True  # runc's default kept
    caps = spec["process"]["capabilities"]
    assert set(caps) == {"bounding", "effective", "permitted"}  # no ambient, no inheritable
    assert caps["bounding"] == list(DEFAULT_CAPS)
    assert spec["hostname"] == "box"
    assert spec["root"] == {"path": "rootfs", "readonly": False}


def test_spec_namespaces_network_and_mounts() -> None:
    host = build_spec(proc(), layout())
    kinds = [ns["type"] for ns in host["linux"]["namespaces"]]
    assert sorted(kinds) == ["ipc", "mount", "pid", "uts"]  # the host's network
    none = build_spec(proc(), layout(network_none=True))
    assert "network" in [ns["type"] for ns in none["linux"]["namespaces"]]
    binds = {m["destination"]: m for m in host["mounts"] if m["type"] == "bind"}
    assert binds["/etc/hosts"]["source"] == "/run/b/hosts"
    assert set(binds) == {"/etc/hosts", "/etc/hostname", "/etc/resolv.conf"}
    vols = build_spec(proc(), layout(volumes=(Volume("/h", "/c", True),), skip_files=("hosts",)))
    binds = {m["destination"]: m for m in vols["mounts"] if m["type"] == "bind"}
    assert binds["/c"]["options"] == ["rbind", "rprivate", "ro"]
    assert "/etc/hosts" not in binds


def test_spec_rootless_and_stop_signal() -> None:
    spec = build_spec(
        proc(), layout(rootless_ids=(65534, 65534), stop_signal="SIGUSR1", network_none=True)
    )
    linux = spec["linux"]
    assert linux["uidMappings"] == [{"containerID": 0, "hostID": 65534, "size": 1}]
    assert sorted(ns["type"] for ns in linux["namespaces"]) == [
        "ipc",
        "mount",
        "network",
        "pid",
        "user",
        "uts",
    ]
    assert "resources" not in linux
    assert spec["annotations"] == {"org.opencontainers.image.stopSignal": "SIGUSR1"}


def test_mount_targets_skip_what_a_mount_covers() -> None:
    spec = build_spec(proc(), layout(volumes=(Volume("/h", "/data"),)))
    dests = [m["destination"] for m in mount_targets(spec)]
    assert dests == [
        "/proc",
        "/dev",
        "/sys",
        "/etc/hosts",
        "/etc/hostname",
        "/etc/resolv.conf",
        "/data",
    ]


IMAGE = process.ImageRuntime.from_config(
    {
        "config": {
            "Entrypoint": ["/bin/echo", "entry"],
            "Cmd": ["default"],
            "Env": ["PATH=/bin", "A=1"],
            "WorkingDir": "srv/app",
            "User": "app",
            "StopSignal": "SIGUSR1",
        }
    }
)


def test_command_entrypoint_and_cmd() -> None:
    assert process.command(IMAGE, []) == ("/bin/echo", "entry", "default")
    assert process.command(IMAGE, ["x", "y"]) == ("/bin/echo", "entry", "x", "y")
    only_cmd = process.ImageRuntime(cmd=("/bin/sh",))
    assert process.command(only_cmd, ["ls"]) == ("ls",)
    with pytest.raises(InvalidArgument, match="no command"):
        process.command(process.ImageRuntime(), [])


def test_environment_order_and_overrides() -> None:
    env = process.environment(IMAGE, ["A=2", "B=3"], User(home="/home/app"), "box", True)
    assert env == ("PATH=/bin", "HOSTNAME=box", "TERM=xterm", "A=2", "B=3", "HOME=/home/app")
    plain = process.environment(process.ImageRuntime(), ["HOME=/x"], User(), "h", False)
    assert plain == (f"PATH={process.DEFAULT_PATH}", "HOSTNAME=h", "HOME=/x")


def test_environment_bare_name_unsets_as_containerd() -> None:
    assert process.merge_env(["A=1", "B=2"], ["A", "C", "", "B=3"]) == ["B=3"]
    image = process.ImageRuntime(env=("PATH=/bin", "X=1", "X", "LONE"))
    assert process.environment(image, [], User(), "h", False) == (
        "PATH=/bin",
        "HOSTNAME=h",
        "HOME=/",
    )


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"Env": ["=x"]}, "Env entry '=x' has no name"),
        ({"Env": ["A=\0"]}, "Env entry 'A=\\x00' contains a NUL"),
        ({"Cmd": ["sh", "a\0"]}, "Cmd entry 'a\\x00' contains a NUL"),
        ({"Entrypoint": ["x" * 131072]}, "Entrypoint entry 'xxx"),
        ({"WorkingDir": "/a\0"}, "WorkingDir '/a\\x00' contains a NUL"),
    ],
)
def test_image_config_strings_execve_refuses(config: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        process.ImageRuntime.from_config({"config": config})
    assert message in str(refused.value)


def test_working_dir() -> None:
    assert process.working_dir(IMAGE, None) == "/srv/app"
    assert process.working_dir(IMAGE, "/tmp/../w") == "/w"
    assert process.working_dir(process.ImageRuntime(), None) == "/"
    with pytest.raises(InvalidArgument, match="not absolute"):
        process.working_dir(IMAGE, "rel")
    assert process.working_dir(IMAGE, "/" + "n" * 255) == "/" + "n" * 255
    for too_long in ("/" + "n" * 256, "/d" * 2048):
        with pytest.raises(InvalidArgument, match="longer than the kernel takes"):
            process.working_dir(IMAGE, too_long)


def test_ill_typed_config_is_an_error() -> None:
    with pytest.raises(InvalidArgument, match="Cmd"):
        process.ImageRuntime.from_config({"config": {"Cmd": "sh"}})
    with pytest.raises(InvalidArgument, match="User"):
        process.ImageRuntime.from_config({"config": {"User": 0}})


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("", User(0, 0, (0, 10), "/root")),
        ("root", User(0, 0, (0, 10), "/root")),
        ("app", User(1000, 1001, (1001, 3000, 3001), "/home/app")),
        ("1000", User(1000, 1001, (1001, 3000, 3001), "/home/app")),
        ("app:extra", User(1000, 3000, (), "/home/app")),
        ("app:5", User(1000, 5, (), "/home/app")),
        ("4242", User(4242, 0, (0,), "/")),
        ("4242:4343", User(4242, 4343, (), "/")),
        ("svc", User(2000, 2000, (2000, 3000), "/srv")),
    ],
)
def test_users_resolve(spec: str, expected: User) -> None:
    assert users.resolve(spec, PASSWD, GROUP) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nosuch", "unable to find user nosuch"),
        ("app:nogroup", "unable to find group nogroup"),
        ("app:", "empty group"),
        ("99999999999", "uid 99999999999 is out of range"),
        ("0:2147483648", "gid 2147483648 is out of range"),
    ],
)
def test_users_errors(spec: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        users.resolve(spec, PASSWD, GROUP)


def test_volume_specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert options.parse_volume(f"{tmp_path}:/data:ro") == Volume(str(tmp_path), "/data", True)
    assert options.parse_volume(f"{tmp_path}:/d/../data") == Volume(str(tmp_path), "/data")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")  # a relative host path, as docker and podman take it
    assert options.parse_volume("./:/w") == Volume(str(tmp_path / "sub"), "/w")
    assert options.parse_volume("..:/w:ro") == Volume(str(tmp_path), "/w", True)
    with pytest.raises(InvalidArgument, match="named volumes are not supported"):
        options.parse_volume("rel:/c")
    for bad in (
        "nocolon",
        f"{tmp_path}:rel",
        "rel:/c",
        "./missing:/c",
        f"{tmp_path}:/c:rx",
        f"{tmp_path}/missing:/c",
        f"{tmp_path}:/",
        f"{tmp_path}:/a:ro:x",
    ):
        with pytest.raises(InvalidArgument):
            options.parse_volume(bad)


def test_env_assignments_and_file(tmp_path: Path) -> None:
    host = {"FROM_HOST": "h"}
    assert options.env_assignments(["A=1", "FROM_HOST", "UNSET", "B="], host) == [
        "A=1",
        "FROM_HOST=h",
        "B=",
    ]
    with pytest.raises(InvalidArgument):
        options.env_assignments(["=x"], host)
    env_file = tmp_path / "env"
    env_file.write_text("# comment\n\nC=3\nFROM_HOST\n")
    assert options.read_env_file(str(env_file), host) == ["C=3", "FROM_HOST=h"]
    with pytest.raises(InvalidArgument, match="cannot read"):
        options.read_env_file(str(tmp_path / "missing"), host)
    with pytest.raises(InvalidArgument, match="--net"):
        options.check_network("bridge")


def test_id_shift_is_a_swap() -> None:
    shift = IdShift(65534, 100)
    assert [shift.uid_out(u) for u in (0, 65534, 5)] == [65534, 0, 5]
    assert [shift.gid_in(shift.gid_out(g)) for g in (0, 100, 7)] == [0, 100, 7]
