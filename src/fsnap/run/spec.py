"""The OCI runtime spec (``config.json``) of one ``fsnap run``: pure functions, no runc.

The base is what ``runc spec`` prints (runc 1.1, ``runc_default_spec``; a test compares it
with the installed runc's output), turned rootless the way ``runc spec --rootless`` does
(``to_rootless``). On it ``build_spec`` puts what containerd and podman derive from an image
config and the command line: the process (``fsnap.run.process``), the hostname, the bind
mounts of /etc/hosts, /etc/hostname and /etc/resolv.conf from the bundle, the user's
volumes, and the network namespace (the host's unless ``--net none``).

Deliberate choices beyond runc's defaults, each as containerd's default spec has it:
the capability set (runc's default keeps only three, with which root in a container cannot
chown or read a file it does not own, so no package manager works), no ambient or
inheritable capabilities, and the image's ``StopSignal`` as an annotation. runc's own
defaults stay: ``noNewPrivileges``, the masked and read-only /proc paths, RLIMIT_NOFILE.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# ``runc spec`` of runc 1.1 (Debian 12's 1.1.5, Debian 13's 1.1.15), ``args``/``terminal``
# aside: build_spec replaces them.
_RUNC_DEFAULT: dict[str, Any] = {
    "ociVersion": "1.0.2-dev",
    "process": {
        "terminal": True,
        "user": {"uid": 0, "gid": 0},
        "args": ["sh"],
        "env": [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "TERM=xterm",
        ],
        "cwd": "/",
        "capabilities": {
            kind: ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
            for kind in ("bounding", "effective", "permitted", "ambient")
        },
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": True,
    },
    "root": {"path": "rootfs", "readonly": True},
    "hostname": "runc",
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        },
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
        },
    ],
    "linux": {
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
        "maskedPaths": [
            "/proc/acpi",
            "/proc/asound",
            "/proc/kcore",
            "/proc/keys",
            "/proc/latency_stats",
            "/proc/timer_list",
            "/proc/timer_stats",
            "/proc/sched_debug",
            "/sys/firmware",
            "/proc/scsi",
        ],
        "readonlyPaths": [
            "/proc/bus",
            "/proc/fs",
            "/proc/irq",
            "/proc/sys",
            "/proc/sysrq-trigger",
        ],
    },
}

# containerd's default capability set (oci.defaultUnixCaps), which docker and podman share.
DEFAULT_CAPS = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)
STOP_SIGNAL_ANNOTATION = "org.opencontainers.image.stopSignal"
# The files a container gets from its bundle directory, bind-mounted over the image's.
BUNDLE_FILES = ("hosts", "hostname", "resolv.conf")


def runc_default_spec() -> dict[str, Any]:
    """A fresh copy of what ``runc spec`` prints."""
    return copy.deepcopy(_RUNC_DEFAULT)


def to_rootless(spec: dict[str, Any], uid: int, gid: int) -> None:
    """What ``runc spec --rootless`` changes (runc's ``specconv.ToRootless``), in place: a
    user namespace mapping container root to ``uid``/``gid`` (the caller: nothing else is
    mapped), no network namespace of its own, /sys bound from the host instead of a new
    sysfs (which needs a network namespace of the caller's), no ``gid=5`` for devpts (group
    5 is not mapped), and no device cgroup rules (an unprivileged runc cannot set them)."""
    linux = spec["linux"]
    linux["namespaces"] = [ns for ns in linux["namespaces"] if ns["type"] != "network"]
    linux["namespaces"].append({"type": "user"})
    linux["uidMappings"] = [{"containerID": 0, "hostID": uid, "size": 1}]
    linux["gidMappings"] = [{"containerID": 0, "hostID": gid, "size": 1}]
    linux.pop("resources", None)
    for mount in spec["mounts"]:
        if mount["destination"] == "/sys":
            mount.update(
                type="none", source="/sys", options=["rbind", "nosuid", "noexec", "nodev", "ro"]
            )
        elif mount["destination"] == "/dev/pts":
            mount["options"] = [o for o in mount["options"] if not o.startswith("gid=")]


@dataclass(frozen=True)
class User:
    """Who the process runs as: ids in the container, and the home directory for HOME."""

    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()
    home: str = "/"


@dataclass(frozen=True)
class Volume:
    """A ``-v HOST:CTR[:ro]`` bind mount."""

    source: str
    destination: str
    readonly: bool = False


@dataclass(frozen=True)
class Process:
    """The container's process as an image config and the command line define it."""

    args: tuple[str, ...]
    env: tuple[str, ...]
    cwd: str
    user: User
    terminal: bool = False


@dataclass(frozen=True)
class Layout:
    """Everything of a run besides its process that goes into config.json."""

    hostname: str
    bundle: str
    volumes: tuple[Volume, ...] = ()
    network_none: bool = False
    readonly_root: bool = False
    rootless_ids: tuple[int, int] | None = None  # (uid, gid) of the caller, when rootless
    stop_signal: str = ""
    # Bundle files (BUNDLE_FILES) to leave out: a read-only root that lacks the target.
    skip_files: tuple[str, ...] = ()


def build_spec(process: Process, layout: Layout) -> dict[str, Any]:
    """The whole config.json of a run, as a dict ready for ``json.dump``."""
    spec = runc_default_spec()
    if layout.rootless_ids is not None:
        to_rootless(spec, *layout.rootless_ids)
    spec["process"] = _process(spec["process"], process)
    spec["root"] = {"path": "rootfs", "readonly": layout.readonly_root}
    spec["hostname"] = layout.hostname
    spec["mounts"] += bundle_mounts(layout) + [volume_mount(v) for v in layout.volumes]
    spec["linux"]["namespaces"] = _namespaces(spec["linux"]["namespaces"], layout.network_none)
    if layout.stop_signal:
        spec["annotations"] = {STOP_SIGNAL_ANNOTATION: layout.stop_signal}
    return spec


def _process(base: dict[str, Any], process: Process) -> dict[str, Any]:
    user: dict[str, Any] = {"uid": process.user.uid, "gid": process.user.gid}
    if process.user.additional_gids:
        user["additionalGids"] = list(process.user.additional_gids)
    caps = list(DEFAULT_CAPS)
    return {
        **base,
        "terminal": process.terminal,
        "user": user,
        "args": list(process.args),
        "env": list(process.env),
        "cwd": process.cwd,
        "capabilities": {kind: caps for kind in ("bounding", "effective", "permitted")},
    }


def bundle_mounts(layout: Layout) -> list[dict[str, Any]]:
    """/etc/hosts, /etc/hostname and /etc/resolv.conf bound from the bundle directory."""
    return [
        {
            "destination": f"/etc/{name}",
            "type": "bind",
            "source": f"{layout.bundle}/{name}",
            "options": ["rbind", "rprivate"],
        }
        for name in BUNDLE_FILES
        if name not in layout.skip_files
    ]


def volume_mount(volume: Volume) -> dict[str, Any]:
    options = ["rbind", "rprivate"] + (["ro"] if volume.readonly else [])
    return {
        "destination": volume.destination,
        "type": "bind",
        "source": volume.source,
        "options": options,
    }


def _namespaces(namespaces: Sequence[dict[str, Any]], network_none: bool) -> list[dict[str, Any]]:
    """The default set without a network namespace (the host's network, as ``--net host``)
    unless ``network_none``: then a new one, where runc brings up only ``lo``."""
    kept = [dict(ns) for ns in namespaces if ns["type"] != "network"]
    if network_none:
        kept.append({"type": "network"})
    return kept


def mount_targets(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The mounts whose target runc would create in the root file system when missing: all
    but those inside an earlier non-bind mount of the list (/dev/pts in /dev's tmpfs)."""
    targets: list[dict[str, Any]] = []
    covered: list[str] = []
    for mount in spec["mounts"]:
        dest = mount["destination"].rstrip("/") or "/"
        if any(dest.startswith(c + "/") for c in covered):
            continue
        if mount["type"] != "bind":
            covered.append(dest)
        targets.append(mount)
    return targets
