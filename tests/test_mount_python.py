"""Debian's own python3 runs from an fsnap mount: pull, mount, ``chroot MNT python3.X``.

The image is built from the interpreter this machine's ``/usr/bin/python3`` resolves to
(``python3.11`` on Debian 12, ``python3.13`` on Debian 13) in three layers: the shared
libraries ``ldd`` names and the dynamic loader (with the usrmerge links); the interpreter
and the part of its stdlib directory (``/usr/lib/python3.X``) a few imports load (what the host's
interpreter reports in ``sys.modules``: the whole stdlib is 50 MB); then a module of our
own plus a whiteout of a module the layer below shipped. The image goes to a real registry,
``fsnap pull`` unpacks it and ``fsnap mount`` serves it; python then starts (exec, mmap of
libraries, the loader), imports stdlib packages and the top layer's module from the mount,
and cannot import the whited-out one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest
from image_builder import (
    Blob,
    Compression,
    Image,
    Layer,
    compress,
    layer_media_type,
    make_image,
)
from support.image_mount import image_mounted, pulled
from support.registry import RegistryProcess
from support.tar import TarBuilder

from fsnap.oci import Platform

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_fuse]

CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"
SYSTEM_PYTHON = "/usr/bin/python3"
IMPORTS = "import json, email, email.parser, http.client"
EXTRA = "fsnap_extra"
DOOMED = "fsnap_doomed"
COLLECT = f"""{IMPORTS}
import sys
for module in list(sys.modules.values()):
    if getattr(module, "__file__", None):
        print(module.__file__)
"""
PROGRAM = f"""{IMPORTS}, {EXTRA}, sys
message = email.parser.Parser().parsestr("Subject: hello\\n\\nbody")
print(json.dumps([sys.version_info[:2], json.__file__, message["Subject"],
                  http.client.HTTPConnection.__name__, {EXTRA}.GREETING]))
try:
    import {DOOMED}
except ModuleNotFoundError:
    print("{DOOMED} is gone")
"""


class Tree:
    """A layer's members: parent directories first (once each), then files and links."""

    def __init__(self) -> None:
        self.tar = TarBuilder()
        self.seen: set[str] = set()

    def parents(self, path: str) -> None:
        parts = path.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            directory = "/".join(parts[:depth])
            if directory not in self.seen:
                self.seen.add(directory)
                self.tar.dir(directory)

    def symlink(self, path: str, target: str) -> None:
        if path not in self.seen:
            self.parents(path)
            self.seen.add(path)
            self.tar.symlink(path, target)

    def host_file(self, host: str) -> None:
        """Copy a host file to its real path; its other spelling becomes a symlink."""
        real = os.path.realpath(host)
        if real.lstrip("/") not in self.seen:
            self.parents(real.lstrip("/"))
            self.seen.add(real.lstrip("/"))
            mode = os.stat(real).st_mode & 0o7777
            self.tar.file(real.lstrip("/"), Path(real).read_bytes(), mode=mode)
        logical = os.path.join(os.path.realpath(os.path.dirname(host)), os.path.basename(host))
        if logical != real:
            self.symlink(logical.lstrip("/"), real)

    def file(self, path: str, data: bytes) -> None:
        self.parents(path)
        self.seen.add(path)
        self.tar.file(path, data)


@cache
def system_python() -> tuple[Path, Path, list[int]]:
    """(interpreter, stdlib directory, [major, minor]) of what ``/usr/bin/python3`` runs."""
    asked = (
        "import json, sys, sysconfig; print(json.dumps([sysconfig.get_path('stdlib'), "
        "list(sys.version_info[:2])]))"
    )
    out = subprocess.run(
        [SYSTEM_PYTHON, "-I", "-c", asked], capture_output=True, text=True, check=True
    ).stdout
    stdlib, version = json.loads(out)
    return Path(os.path.realpath(SYSTEM_PYTHON)), Path(stdlib), version


def shared_libraries(binaries: list[str]) -> list[str]:
    """Every library (and the loader) ``ldd`` lists for ``binaries``, as host paths."""
    found: list[str] = []
    for binary in binaries:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            paths = [word for word in line.split() if word.startswith("/")]
            if paths and paths[0] not in found:
                found.append(paths[0])
    return found


def stdlib_files() -> list[str]:
    """The stdlib files the host's interpreter loads for ``IMPORTS`` (and to start)."""
    python, stdlib, _ = system_python()
    out = subprocess.run(
        [str(python), "-I", "-c", COLLECT], capture_output=True, text=True, check=True
    ).stdout
    return sorted({p for p in out.split() if p.startswith(f"{stdlib}/")})


def python_image() -> Image:
    python_bin, stdlib, _ = system_python()
    modules = stdlib_files()
    extensions = [p for p in modules if p.endswith(".so")]
    libs = Tree()
    for top in ("bin", "lib", "lib64"):
        libs.symlink(top, f"usr/{top}")
    for lib in shared_libraries([str(python_bin), *extensions]):
        libs.host_file(lib)
    python = Tree()
    python.host_file(str(python_bin))
    python.symlink("usr/bin/python3", python_bin.name)
    for module in modules:
        python.host_file(module)
    python.parents(f"{stdlib}/lib-dynload/x".lstrip("/"))  # the exec_prefix landmark
    python.file(f"{stdlib}/{DOOMED}.py".lstrip("/"), b"WHITED_OUT_ABOVE = False\n")
    extra = TarBuilder()
    extra.file(f"{stdlib}/{EXTRA}.py".lstrip("/"), b'GREETING = "from the top layer"\n')
    extra.whiteout(f"{stdlib}/{DOOMED}.py".lstrip("/"))
    tars = [libs.tar.data(), python.tar.data(), extra.data()]
    kinds: tuple[Compression, ...] = ("gzip", "zstd", "gzip")
    layers = [
        Layer(Blob(layer_media_type(kind), compress(tar, kind)), tar)
        for tar, kind in zip(tars, kinds, strict=True)
    ]
    return make_image(
        layers,
        platform=Platform.host(),
        config={"Cmd": ["/usr/bin/python3"], "Env": ["PATH=/usr/bin:/bin"]},
    )


@pytest.fixture(scope="module")
def python_ref(registry: RegistryProcess) -> str:
    """The python image, pushed once for this module's tests."""
    assert os.path.exists(SYSTEM_PYTHON), "scripts/setup installs Debian's python3"
    tag = ".".join(map(str, system_python()[2]))
    registry.push_image("python/debian", tag, python_image())
    return f"{registry.host}/python/debian:{tag}"


def test_chroot_python_imports_from_the_mount(python_ref: str, tmp_path: Path) -> None:
    python, stdlib, version = system_python()
    root = tmp_path / "fsnap"
    pulled(root, python_ref)
    with image_mounted(root, python_ref, tmp_path / "mnt") as mnt:
        done = subprocess.run(
            [CHROOT, str(mnt), str(python), "-c", PROGRAM],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin"},
        )
        doomed_visible = os.path.lexists(mnt / stdlib.relative_to("/") / f"{DOOMED}.py")
        listed = os.listdir(mnt / stdlib.relative_to("/"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        json.dumps(
            [version, f"{stdlib}/json/__init__.py", "hello", "HTTPConnection", "from the top layer"]
        ),
        f"{DOOMED} is gone",
    ]
    assert not doomed_visible
    assert f"{EXTRA}.py" in listed
    assert f"{DOOMED}.py" not in listed
    assert not [name for name in listed if name.startswith(".wh.")]


def test_usr_bin_python3_symlink_runs(python_ref: str, tmp_path: Path) -> None:
    """The interpreter through its symlink, from ``/bin`` (a usrmerge link in the first
    layer): lookups cross layers and symlinks inside the mount."""
    root = tmp_path / "fsnap"
    pulled(root, python_ref)
    with image_mounted(root, python_ref, tmp_path / "mnt") as mnt:
        done = subprocess.run(
            [CHROOT, str(mnt), "/bin/python3", "-c", "import sys; print(sys.executable)"],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin"},
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "/bin/python3"
