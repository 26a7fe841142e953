"""Registry configuration fsnap would read: docker's config.json and hosts.toml trees."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fsnap.info.probe import from_errno
from fsnap.remotes.dockerconfig import default_docker_config

# containerd's layout (``certs.d/<host>/hosts.toml``), fsnap's own first.
HOSTS_DIRS = ("/etc/fsnap/certs.d", "/etc/containerd/certs.d")


@dataclass(frozen=True)
class HostsDir:
    path: str
    exists: bool
    hosts: list[str]


@dataclass(frozen=True)
class RegistryConfig:
    docker_config: str
    docker_config_state: str  # "present", "absent" or "unreadable (EACCES)"
    hosts_dirs: list[HostsDir]


def probe_registry_config(hosts_dirs: tuple[str, ...] = HOSTS_DIRS) -> RegistryConfig:
    config = default_docker_config()
    return RegistryConfig(str(config), _state(config), [_hosts(Path(d)) for d in hosts_dirs])


def _state(path: Path) -> str:
    try:
        path.stat()
    except FileNotFoundError:
        return "absent"
    except OSError as exc:
        return f"unreadable ({from_errno(exc)})"
    return "present"


def _hosts(directory: Path) -> HostsDir:
    try:
        hosts = sorted(p.name for p in directory.iterdir() if (p / "hosts.toml").is_file())
    except OSError:  # absent or unreadable: fsnap would not read it either
        return HostsDir(str(directory), False, [])
    return HostsDir(str(directory), True, hosts)
