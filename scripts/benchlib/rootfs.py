"""The benchmark's root filesystem: debootstrap's minbase with python3, built once.

Preferred: ``debootstrap --variant=minbase --include=python3 bookworm`` from this machine's
own mirror. When no mirror answers, the tree is assembled from the host's ``/usr`` (python3
and the shared libraries it needs come along, so ``chroot ... python3`` still works) and the
run says so: figures from the two kinds of tree are not comparable.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from benchlib.mirror import debian_mirror

# Host trees copied by the fallback: python3 with its modules and every library it links.
HOST_TREES = (
    "usr/bin",
    "usr/sbin",
    "usr/lib/x86_64-linux-gnu",
    "usr/lib/python3.11",
    "usr/lib/python3",
    "usr/lib64",
    "usr/share/zoneinfo",
    "usr/share/doc",
    "etc",
)
USRMERGE = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}


def ensure_rootfs(cache: Path) -> tuple[Path, str]:
    """The cached tree and how it was made ("debootstrap" or "host"); build it if missing."""
    done = cache / "rootfs.done"
    root = cache / "rootfs"
    if done.is_file():
        return root, done.read_text().strip()
    if root.exists():
        shutil.rmtree(root)
    how = "debootstrap" if _debootstrap(root) else "host"
    if how == "host":
        if root.exists():
            shutil.rmtree(root)
        print(
            "bench: debootstrap failed; building the image from the host's /usr instead "
            "(figures are not comparable with a debootstrap image)",
            file=sys.stderr,
        )
        _from_host(root)
    done.write_text(how + "\n")
    return root, how


def _debootstrap(root: Path) -> bool:
    mirror = debian_mirror()
    if mirror is None:
        print("bench: no bookworm mirror in the apt sources", file=sys.stderr)
        return False
    if shutil.which("debootstrap") is None:
        _apt_install("debootstrap")
    print(
        f"bench: debootstrap minbase + python3 into {root} (a few minutes, once)", file=sys.stderr
    )
    cmd = ["debootstrap", "--variant=minbase", "--include=python3", "bookworm", str(root), mirror]
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        print(f"bench: debootstrap: {done.stderr.strip()[-800:]}", file=sys.stderr)
        return False
    # The package cache is not part of an image.
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    return (root / "usr/bin/python3").exists()


def _from_host(root: Path) -> None:
    root.mkdir(parents=True)
    for tree in HOST_TREES:
        src = Path("/") / tree
        if src.is_dir():
            dest = root / tree
            dest.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["cp", "-a", str(src), str(dest)], check=True)
    for link, target in USRMERGE.items():
        if not (root / link).exists():
            (root / link).symlink_to(target)
    for name in ("tmp", "proc", "dev", "root", "var/tmp"):
        (root / name).mkdir(parents=True, exist_ok=True)


def _apt_install(package: str) -> None:
    print(f"bench: apt-get install {package}", file=sys.stderr)
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True, env=env)


def apt_install_missing(command: str, package: str) -> None:
    """Install ``package`` when ``command`` is not on PATH (containerd, fuse-overlayfs...)."""
    if shutil.which(command) is None:
        _apt_install(package)
