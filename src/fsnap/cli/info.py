"""`fsnap info`: what fsnap can do on this machine (engine: ``fsnap.info``).

``fsnap.info.report`` is imported by the handler, not here: its registry probe loads httpx
and trio, which ``fsnap --help`` (it registers every topic) must not pay for.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from fsnap.progress import human_size

if TYPE_CHECKING:
    from fsnap.client import Client
    from fsnap.info.probe import Tool
    from fsnap.info.report import Report


def register(subparsers: Any) -> None:
    """Add ``info``."""
    parser = subparsers.add_parser(
        "info", help="report the store's file system, FUSE, kernel, namespaces, tools"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(handler=handle_info)


def handle_info(client: Client, args: argparse.Namespace) -> int:
    from fsnap.info.report import collect

    report = collect(client.root)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        for title, rows in sections(report):
            print(f"{title}:")
            for key, value in rows:
                print(f"  {key}: {value}")
    return 0


def sections(report: Report) -> list[tuple[str, list[tuple[str, str]]]]:
    """The report as titled ``key: value`` rows, in the order they are printed."""
    store, fuse, kernel, userns = report.store, report.fuse, report.kernel, report.user_namespaces
    where = (
        store.path
        if store.probed == store.path
        else f"{store.path} (not created yet; probed {store.probed})"
    )
    overlay = " ".join(f"{k}={v}" for k, v in kernel.overlay_defaults.items())
    hosts = ", ".join(
        f"{d.path} ({', '.join(d.hosts) or 'no hosts'})" if d.exists else f"{d.path} (absent)"
        for d in report.registry.hosts_dirs
    )
    config = report.registry
    docker = "" if config.docker_config_state == "present" else f" ({config.docker_config_state})"
    return [
        ("fsnap", [("version", report.version), ("python", report.python)]),
        (
            "store",
            [
                ("path", where),
                (
                    "filesystem",
                    f"{store.fstype}, {human_size(store.free)} free of {human_size(store.size)}",
                ),
                ("RWF_NOWAIT reads", store.rwf_nowait.text()),
                ("O_NOATIME opens", store.o_noatime.text()),
                ("user.* xattrs", store.user_xattrs.text()),
                ("d_type", store.d_type.text()),
            ],
        ),
        (
            "fuse",
            [
                ("/dev/fuse", fuse.device.text()),
                ("fusermount3", _tool(fuse.fusermount3)),
                ("passthrough", fuse.passthrough.text()),
                ("io_uring", fuse.io_uring.text()),
            ],
        ),
        (
            "kernel",
            [
                ("release", kernel.release),
                ("file systems", " ".join(kernel.filesystems)),
                (
                    "overlayfs",
                    kernel.overlayfs.text() + (f" (defaults: {overlay})" if overlay else ""),
                ),
            ],
        ),
        (
            "user namespaces",
            [
                ("kernel.unprivileged_userns_clone", userns.unprivileged_userns_clone or "absent"),
                ("user.max_user_namespaces", userns.max_user_namespaces or "absent"),
                (
                    "kernel.apparmor_restrict_unprivileged_userns",
                    userns.apparmor_restrict or "absent",
                ),
                ("unshare --user", userns.unshare.text()),
            ],
        ),
        ("runtimes", [(tool.name, _tool(tool)) for tool in report.runtimes]),
        (
            "registry",
            [
                ("docker config", report.registry.docker_config + docker),
                ("hosts.toml dirs", hosts),
            ],
        ),
    ]


def _tool(tool: Tool) -> str:
    if tool.path is None:
        return "not found"
    return f"{tool.path} ({tool.version or 'version unknown'})"
