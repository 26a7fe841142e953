"""A run's OCI bundle directory: ``config.json``, the ``rootfs`` mount point, and the files
bound over the image's /etc/hosts, /etc/hostname and /etc/resolv.conf.

Bundles live under the runtime directory (``/run/fsnap`` for root, else
``$XDG_RUNTIME_DIR/fsnap``), not in the fsnap root: a mount point may not be inside it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from fsnap.errors import FailedPrecondition

HOST_RESOLV_CONF = Path("/etc/resolv.conf")
MAX_RESOLV_CONF = 64 * 1024


def runtime_dir() -> Path:
    """Where bundles and runc's state go: /run/fsnap (root), $XDG_RUNTIME_DIR/fsnap, or a
    private /tmp/fsnap-run-UID when the session has no runtime directory."""
    if os.geteuid() == 0:
        base = Path("/run/fsnap")
    elif os.environ.get("XDG_RUNTIME_DIR"):
        base = Path(os.environ["XDG_RUNTIME_DIR"]) / "fsnap"
    else:
        base = Path(f"/tmp/fsnap-run-{os.geteuid()}")
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = base.lstat()
    if st.st_uid != os.geteuid() or st.st_mode & 0o022 or not base.is_dir():
        raise FailedPrecondition(f"runtime directory {base} is not a private directory of yours")
    return base


def hosts_file(hostname: str) -> str:
    """/etc/hosts of a container: loopback names and its own hostname."""
    return "\n".join(
        [
            "127.0.0.1\tlocalhost",
            "::1\tlocalhost ip6-localhost ip6-loopback",
            "fe00::0\tip6-localnet",
            "ff00::0\tip6-mcastprefix",
            "ff02::1\tip6-allnodes",
            "ff02::2\tip6-allrouters",
            f"127.0.1.1\t{hostname}",
            "",
        ]
    )


def create(bundle: Path) -> Path:
    """Make the bundle directory and its (empty) rootfs mount point; return the latter."""
    bundle.mkdir(mode=0o711)
    rootfs = bundle / "rootfs"
    rootfs.mkdir(mode=0o755)
    return rootfs


def write(bundle: Path, spec: dict[str, Any], hostname: str) -> None:
    """Write config.json and the /etc files the spec binds from the bundle."""
    (bundle / "hosts").write_text(hosts_file(hostname))
    (bundle / "hostname").write_text(hostname + "\n")
    try:
        with HOST_RESOLV_CONF.open("rb") as src:
            resolv = src.read(MAX_RESOLV_CONF)
    except OSError:
        resolv = b""
    (bundle / "resolv.conf").write_bytes(resolv)
    for name in ("hosts", "hostname", "resolv.conf"):
        os.chmod(bundle / name, 0o644)
    with open(bundle / "config.json", "w") as out:
        json.dump(spec, out, indent=2)


def remove(bundle: Path) -> None:
    """Remove a bundle whose rootfs is no longer mounted (an empty mount point is kept by
    ``rmdir`` semantics: a still-mounted rootfs makes this fail instead of emptying it)."""
    from fsnap.mount.records import mounted_points

    rootfs = bundle / "rootfs"
    if str(rootfs) in mounted_points():
        raise FailedPrecondition(f"{rootfs} is still mounted")
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(rootfs)
    shutil.rmtree(bundle, ignore_errors=True)
