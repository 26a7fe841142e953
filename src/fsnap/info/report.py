"""Everything ``fsnap info`` reports, gathered in one call."""

from __future__ import annotations

import dataclasses
import platform
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from fsnap.info.fuse import FuseInfo, probe_fuse
from fsnap.info.kernel import KernelInfo, probe_kernel
from fsnap.info.probe import Tool, probe_tool
from fsnap.info.registry import RegistryConfig, probe_registry_config
from fsnap.info.store import StoreInfo, probe_store
from fsnap.info.userns import UsernsInfo, probe_userns

# Programs the runtime side of fsnap works with: name -> the arguments that print a version.
RUNTIME_TOOLS = {"runc": ("--version",), "containerd": ("--version",), "ctr-remote": ("--version",)}


@dataclass(frozen=True)
class Report:
    version: str
    python: str
    store: StoreInfo
    fuse: FuseInfo
    kernel: KernelInfo
    user_namespaces: UsernsInfo
    runtimes: list[Tool]
    registry: RegistryConfig

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types (``Probe`` becomes ``{"available": ..., "detail": ...}``)."""
        return dataclasses.asdict(self)


def fsnap_version() -> str:
    try:
        return metadata.version("fsnap")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def collect(root: Path) -> Report:
    """Probe the machine for a store at ``root`` (which need not exist yet)."""
    return Report(
        version=fsnap_version(),
        python=f"{platform.python_implementation()} {sys.version.split()[0]}",
        store=probe_store(root),
        fuse=probe_fuse(),
        kernel=probe_kernel(),
        user_namespaces=probe_userns(),
        runtimes=[probe_tool(name, args) for name, args in RUNTIME_TOOLS.items()],
        registry=probe_registry_config(),
    )
