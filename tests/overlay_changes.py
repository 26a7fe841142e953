"""One change set for a writable overlay mount, run as a child process: ``python
overlay_changes.py MNT``. Applied to kernel overlayfs and to fsnap-overlay over the same
lower stack, both must end up showing the same tree. Every non-directory it creates or
changes gets a fixed mtime at the end, so the two listings may compare mtimes too.
"""

import os
import shutil
import stat
import sys

STAMP = 1_660_000_000_987_654_321


def main(mnt: str) -> None:
    os.chdir(mnt)
    touched = [
        "new.txt",
        "etc/passwd",
        "data/a2",
        "data/b",
        "data/c",
        "opq2/fresh",
        "new-link",
        "data/d-link",
        "sym2",
        "fifo2",
        "data/e",
        "data/f",
        "dev2",
        "newdir/inner",
    ]
    with open("new.txt", "wb") as f:
        f.write(b"brand new\n")
    with open("etc/passwd", "ab") as f:
        f.write(b"extra:x:2:2\n")
    os.unlink("etc/keep")
    os.rename("data/a", "data/a2")
    shutil.move("tree", "tree2")  # kernel overlayfs may say EXDEV: then mv's copy
    os.chmod("data/b", 0o600)
    os.chown("data/c", 1000, 1000)
    shutil.rmtree("opq2")
    os.mkdir("opq2", 0o700)
    with open("opq2/fresh", "wb") as f:
        f.write(b"fresh\n")
    os.link("new.txt", "new-link")
    os.link("data/d", "data/d-link")
    os.symlink("etc/passwd", "sym2")
    os.mkfifo("fifo2", 0o640)
    os.setxattr("data/e", "user.size", b"big")
    os.removexattr("data/e", "user.color")
    os.truncate("data/f", 100)
    os.mknod("dev2", stat.S_IFCHR | 0o600, os.makedev(1, 5))
    os.mkdir("newdir")
    with open("newdir/inner", "wb") as f:
        f.write(b"inner\n")
    shutil.rmtree("new/deep")
    os.unlink("dev/fifo")
    for rel in touched:
        os.utime(rel, ns=(STAMP, STAMP), follow_symlinks=False)


if __name__ == "__main__":
    main(sys.argv[1])
