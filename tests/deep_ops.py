"""Operations below a path deeper than PATH_MAX, run against one directory in their own
process (``python deep_ops.py DIR``); prints "ok" or raises.

Programs reach such depths with mkdir + chdir one step at a time: every system call below
gets a short relative path, so only the file system's own bookkeeping can trip over the
depth."""

from __future__ import annotations

import errno
import os
import stat
import sys

DEPTH_BYTES = 5000  # beyond PATH_MAX (4096)
STEP = "d" * 200


def expect_errno(code: int, func: object, *args: object) -> None:
    try:
        func(*args)  # type: ignore[operator]
    except OSError as exc:
        failure = exc
    else:
        raise AssertionError(f"{func} succeeded")
    assert failure.errno == code, (func, failure)


def main() -> None:
    os.chdir(sys.argv[1])
    depth = 0
    while depth <= DEPTH_BYTES:
        os.mkdir(STEP)
        os.chdir(STEP)
        depth += len(STEP) + 1
    with open("file", "wb") as out:
        out.write(b"deep")
    os.link("file", "hard")
    assert os.stat("hard").st_nlink == 2
    os.rename("hard", "renamed")
    os.symlink("file", "sym")
    os.mkfifo("fifo")
    os.mkdir("sub")
    os.rename("file", "sub/file")
    os.chmod("sub/file", 0o600)
    os.utime("sub/file", ns=(1, 2))
    st = os.stat("sub/file")
    assert (stat.S_IMODE(st.st_mode), st.st_atime_ns, st.st_mtime_ns) == (0o600, 1, 2)
    with open("sub/file", "r+b") as f:
        f.truncate(2)
    with open("renamed", "rb") as f:
        assert f.read() == b"de"
    os.setxattr("renamed", "user.deep", b"yes")
    assert os.getxattr("renamed", "user.deep") == b"yes"
    os.unlink("renamed")
    os.unlink("sym")
    os.unlink("fifo")
    expect_errno(errno.ENAMETOOLONG, os.mkdir, "n" * 256)
    os.mkdir("n" * 255)
    os.rmdir("n" * 255)
    os.rename("sub", "sub2")
    assert sorted(os.listdir(".")) == ["sub2"]
    assert os.listdir("sub2") == ["file"]
    print("ok")


main()
