"""Applying layers in applier processes, so that two layers apply on two cores at once.

An applier thread spends its time in Python that holds the GIL between syscalls (the tar
parse, the per-file creates), so two applier threads mostly wait for each other; two
processes do not. The pull (the parent) keeps everything that touches the stores: the
download, the content store, the LMDB index and the commits. An applier process only
decompresses, hashes and writes one layer's files into a staging directory the parent
made, and answers with the layer's diff ID and index entries, which the parent writes to
LMDB itself: no LMDB environment ever crosses a process.

Protocol, over a Unix stream socket (``socketpair``) per applier: the parent sends a job
(a 4-byte length and JSON: staging directory, the blob's descriptor, diff ID, size cap)
with the blob's file descriptor attached (``SCM_RIGHTS``): the read end of a pipe the
download feeds (``FeedPipe``), or the blob's file in the content store. The applier reads
that descriptor to its end and answers with an 8-byte length, a JSON header line (the
diff ID and the bytes and inodes the staged tree takes, the snapshot's usage; or the
error: its ``fsnap.errors`` class and message, or the errno of an ``OSError``) and the
entries (``marshal``, see ``encode_result``). The same applier then waits for the next
job; it exits when the socket closes.

Crash protocol: an applier dies with its parent (``PR_SET_PDEATHSIG``) and holds the
parent's staging-session lock (``fsnap.unpack.staging``) while it lives, so a new pull
never cleans a staging directory that is still being written; a killed applier leaves a
staging directory that the parent (or the next pull) removes, never a snapshot. It
ignores SIGINT: Ctrl-C stops the pull, which closes its socket.

When no applier process can be started (``sys.executable`` missing, a sandbox refusing
exec, ``FSNAP_UNPACK_PROCESSES=0``), layers apply in threads of the pull, as before:
``ApplierPool.apply`` chooses, and says so in a log line.

Measured (bench-pull image, 4 layers; see docs/benchmarks.md): the child starts in ~0.1 s
of CPU (tarfile, ISA-L, zstandard; no LMDB, no trio), spent while the manifest resolves.
The pull process imports this module for the protocol only: the applying code (``tarfile``,
the decompressors) is imported by ``Job.run`` and, before it says ready, by the applier
process, never by the pull before its first request (``tests/test_pull_start.py``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import marshal
import os
import select
import signal
import socket
import struct
import sys
import threading
import traceback
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO, cast

from fsnap import errors, logs
from fsnap.archive.entry import Entry
from fsnap.archive.result import ApplyResult
from fsnap.errors import FailedPrecondition, FsnapError
from fsnap.oci import Descriptor
from fsnap.unpack.limit import SizeLimit

log = logging.getLogger(__name__)

# Applier processes at most (one layer each at a time). Two: the machines have two cores,
# and the parent's own work (download, content writes) is light next to an applier's.
PROCESSES = 2
ENV = "FSNAP_UNPACK_PROCESSES"  # 0: apply in threads of the pull (the fallback)
PIPE_SIZE = 1 << 20  # a download's pipe: one batch of the puller (WRITE_BATCH) fits
JOB_HEADER = struct.Struct("<I")
REPLY_HEADER = struct.Struct("<Q")
_MAX_JOB = 1 << 20
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Job:
    """One layer to apply: its blob's descriptor, the diff ID it must hash to, where to
    apply it, and the cap on what its files may declare (None: none)."""

    staging: str
    media_type: str
    digest: str
    size: int
    diff_id: str
    max_size: int | None

    @classmethod
    def of(cls, desc: Descriptor, diff_id: str, staging: Path, limit: SizeLimit | None) -> Job:
        max_size = None if limit is None else limit.for_blob(desc.size)
        return cls(str(staging), desc.media_type, desc.digest, desc.size, diff_id, max_size)

    def run(self, source: FdSource, *, stop: threading.Event | None = None) -> ApplyResult:
        """Apply the blob read from ``source`` (in this process, in the calling thread);
        ``stop`` ends it before its next member (see ``apply_blob``)."""
        from fsnap.fdtree import allocated
        from fsnap.unpack.blob import apply_blob

        desc = Descriptor(self.media_type, self.digest, self.size)
        limit = None if self.max_size is None else SizeLimit(absolute=self.max_size)
        result = apply_blob(
            cast(BinaryIO, source),
            desc,
            Path(self.staging),
            self.diff_id,
            interrupt=source.interrupt,
            sync=False,
            limit=limit,
            stop=stop,
        )
        # The snapshot's usage, measured here (in the applier, on the second core) rather
        # than by a walk in the pull's commit: 0.16 s of the pull's samples (py-spy).
        result.allocated = allocated(Path(self.staging))
        return result


class FdSource:
    """A blocking reader of a file descriptor (a pipe or a file) whose blocked ``read``
    another thread can end: ``interrupt`` makes it raise (the applier's read-ahead thread
    may wait on a pipe that a failed apply no longer reads). ``count`` is what it read."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.count = 0
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        self._poll.register(self._wake_r, select.POLLIN)

    def read(self, n: int = -1, /) -> bytes:
        if n < 0:
            n = PIPE_SIZE
        while True:
            ready = {fd for fd, _ in self._poll.poll()}
            if self._wake_r in ready:
                raise FailedPrecondition("the layer's reader was stopped")
            if ready:
                data = os.read(self.fd, n)
                self.count += len(data)
                return data

    def interrupt(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def close(self) -> None:
        """Close the wake-up pipe (``fd`` is the caller's to close)."""
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


def make_pipe() -> tuple[int, int]:
    """A pipe (read end, write end) for one download, as large as the kernel lets us."""
    r, w = os.pipe2(os.O_CLOEXEC)
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    return r, w


# -- the reply: what an applier sends back ------------------------------------------------


# The entries cross as ``marshal`` of one tuple of field values per entry: both ends run
# the same interpreter (``sys.executable``) and this module, so the field order is theirs.
# Measured on the bench image's biggest layer (5,676 entries): JSON lines (``to_bytes``)
# 25 ms to encode and 40 ms to decode (in the pull, on its trio loop); marshal 16 and 8 ms.
# Beside them go the entries' stored form (``to_bytes``: the index's LMDB values), encoded
# here on the applier's core, not again by the pull's commit (~46 ms for the bench image).
_FIELDS = tuple(f.name for f in fields(Entry))


def encode_result(result: ApplyResult) -> bytes:
    head = json.dumps(
        {"diff_id": result.diff_id, "size": result.size, "allocated": result.allocated}
    ).encode()
    rows = [tuple(getattr(entry, name) for name in _FIELDS) for entry in result.entries]
    stored = [entry.to_bytes() for entry in result.entries]  # what the index keeps
    return head + b"\n" + marshal.dumps((rows, stored))


def encode_error(exc: BaseException) -> bytes:
    """An error as the parent re-raises it: a typed fsnap error keeps its class (the nearest
    in ``fsnap.errors``) and message; an ``OSError`` its errno, message and file name (so
    that "no space" still names the store); anything else is a bug, sent with its trace."""
    if isinstance(exc, FsnapError):
        kind = next(c for c in type(exc).__mro__ if c.__module__ == errors.__name__)
        head: dict[str, Any] = {"error": kind.__name__, "message": str(exc)}
    elif isinstance(exc, OSError):
        filename = None if exc.filename is None else os.fsdecode(exc.filename)
        head = {"oserror": exc.errno, "message": exc.strerror or str(exc), "filename": filename}
    else:
        trace = "".join(traceback.format_exception(exc))
        head = {"bug": f"{type(exc).__name__}: {exc}", "trace": trace}
    return json.dumps(head).encode()


def decode_reply(payload: bytes) -> ApplyResult:
    """The parent's side of ``encode_result``/``encode_error``: the result, or the error
    raised as the applier met it."""
    head_raw, _, rest = payload.partition(b"\n")
    head = json.loads(head_raw)
    if "diff_id" in head:
        rows, stored = marshal.loads(rest)
        entries = [Entry(*row) for row in rows]
        measured = head.get("allocated")
        usage = None if measured is None else (int(measured[0]), int(measured[1]))
        return ApplyResult(head["diff_id"], entries, head["size"], usage, stored)
    if "error" in head:
        kind = getattr(errors, str(head["error"]), FsnapError)
        if not (isinstance(kind, type) and issubclass(kind, FsnapError)):
            kind = FsnapError
        raise kind(head["message"])
    if "oserror" in head:
        raise OSError(head["oserror"], head["message"], head["filename"])
    log.debug("the applier process failed:\n%s", head.get("trace", ""))
    raise RuntimeError(f"in the applier process: {head.get('bug')}")


# -- the applier process ------------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    """Be killed when the parent dies (however it dies), and quit if it already has."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(0)


def _receive_job(sock: socket.socket) -> tuple[Job, int] | None:
    """The next job and its blob's descriptor; None when the parent closed the socket."""
    head, fds, _, _ = socket.recv_fds(sock, JOB_HEADER.size, 1)
    if not head:
        return None
    while len(head) < JOB_HEADER.size:
        head += _recv_exactly(sock, JOB_HEADER.size - len(head))
    (length,) = JOB_HEADER.unpack(head)
    if length > _MAX_JOB or len(fds) != 1:
        raise ValueError("malformed job")
    return Job(**json.loads(_recv_exactly(sock, length))), fds[0]


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        data = sock.recv(n - len(out))
        if not data:
            raise EOFError("the parent closed the socket mid-message")
        out += data
    return bytes(out)


def run_job(job: Job, fd: int) -> bytes:
    """Apply ``job`` from ``fd`` (closed after) and encode what happened."""
    source = FdSource(fd)
    try:
        return encode_result(job.run(source))
    except Exception as exc:
        return encode_error(exc)
    finally:
        source.close()
        os.close(fd)


def serve(sock: socket.socket) -> None:
    """Apply jobs until the parent closes the socket. What a job runs is imported first
    (``Job.run`` imports it where it runs, as the pull process imports this module for the
    protocol alone), so that "ready" means ready and the first job starts at once."""
    import fsnap.fdtree
    import fsnap.unpack.blob  # noqa: F401

    sock.sendall(REPLY_HEADER.pack(0))  # ready: imports done
    while (job := _receive_job(sock)) is not None:
        reply = run_job(*job)
        sock.sendall(REPLY_HEADER.pack(len(reply)) + reply)


def main(argv: list[str]) -> int:
    """``python -m fsnap.unpack.worker SOCKET_FD PARENT_PID LOG_LEVEL``.

    The process ends with ``os._exit`` once the parent closes the socket (``logs.exit_now``):
    everything it wrote went through raw descriptors, closed before each answer, and its
    answers are sent; an interpreter's teardown (module and thread clean-up, ~0.05 s of
    CPU) would only delay the pull, which waits for its appliers to exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(int(argv[1]))
    logs.configure(argv[2])
    try:
        with socket.socket(fileno=int(argv[0])) as sock:
            serve(sock)
    except (OSError, EOFError, ValueError) as exc:  # the parent went away mid-message
        log.debug("applier process stops: %s", exc)
        return 1
    return 0


# -- the parent's side --------------------------------------------------------------------


def processes_wanted() -> int:
    """``$FSNAP_UNPACK_PROCESSES`` (0 = threads), else ``PROCESSES``."""
    text = os.environ.get(ENV, "").strip()
    try:
        return max(0, int(text)) if text else PROCESSES
    except ValueError:
        log.warning("$%s=%r is not a number: using %d", ENV, text, PROCESSES)
        return PROCESSES


if __name__ == "__main__":
    logs.exit_now(main(sys.argv[1:]))
