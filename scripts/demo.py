"""The demo behind ``scripts/demo``: registry -> pull -> images -> mount -> chroot -> umount.

It drives the real ``fsnap`` command line, the way a user would, against a real
``docker-registry`` on a loopback port. The image is built on this machine by the same
builder the tests use (tests/image_builder.py), from Debian's busybox-static.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from support.registry import busybox_image, run_registry  # noqa: E402

FSNAP = str(REPO / ".venv" / "bin" / "fsnap")
DEMO = REPO / ".demo"


def step(*argv: str) -> None:
    print(f"\n$ {shlex.join(argv)}", flush=True)
    subprocess.run(argv, check=True)


def main() -> int:
    DEMO.mkdir(exist_ok=True)
    root = DEMO / "root"
    mountpoint = DEMO / "mnt"
    # Each run starts from an empty store: the registry's port, and so the name, changes.
    subprocess.run(
        [FSNAP, "--root", str(root), "umount", str(mountpoint)],
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    shutil.rmtree(root, ignore_errors=True)
    mountpoint.mkdir(exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="fsnap-demo-registry-") as storage,
        run_registry(Path(storage)) as registry,
    ):
        image = busybox_image()
        registry.push_image("demo/busybox", "latest", image)
        ref = f"{registry.host}/demo/busybox:latest"
        print(f"registry on {registry.url} serves {ref} (built from /bin/busybox)")
        fsnap = [FSNAP, "--root", str(root)]
        try:
            step(*fsnap, "pull", ref)
            step(*fsnap, "images")
            step(*fsnap, "snapshots", "tree")
            step(*fsnap, "mount", ref, str(mountpoint))
            step(*fsnap, "mounts")
            step(
                "chroot",
                str(mountpoint),
                "/bin/sh",
                "-c",
                "echo hello from inside the image; uname -s; ls /bin | head -5",
            )
        except subprocess.CalledProcessError as exc:
            print(f"demo: step failed with exit code {exc.returncode}", file=sys.stderr)
            return 1
        finally:
            subprocess.run(
                [*fsnap, "umount", str(mountpoint)], check=False, stderr=subprocess.DEVNULL
            )
    print(f"\ndemo: done. The store stays in {root}: try `{FSNAP} --root {root} images`.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
