"""The gRPC face of a snapshotter: containerd's ``containerd.services.snapshots.v1.Snapshots``.

It serves any ``Snapshotter[list[Mount]]`` (``fsnap.snapshots.api``) that can also clean up
(containerd's optional Cleanup verb): ``fsnap.serve.backend.Backend`` today.
Each method translates one request into one backend call and the result into the reply;
``_translated`` maps fsnap's typed errors to the gRPC codes containerd's ``errdefs``
understands (NotFound, AlreadyExists, InvalidArgument, FailedPrecondition, ...) and logs
one line per call at debug level.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf import empty_pb2, timestamp_pb2

from fsnap import errors
from fsnap.serve.api import mount_pb2, snapshots_pb2, snapshots_pb2_grpc
from fsnap.serve.backend import Mount
from fsnap.snapshots.api import Snapshotter
from fsnap.snapshots.info import Info, Kind

log = logging.getLogger(__name__)

# fsnap's error types -> gRPC status codes (containerd's errdefs.ToGRPC). Order matters:
# the first class an error is an instance of wins.
STATUS = (
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Busy, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.Unsupported, grpc.StatusCode.UNIMPLEMENTED),
)
KINDS = {
    Kind.VIEW: snapshots_pb2.VIEW,
    Kind.ACTIVE: snapshots_pb2.ACTIVE,
    Kind.COMMITTED: snapshots_pb2.COMMITTED,
}
LIST_BATCH = 100  # infos per streamed List reply

F = TypeVar("F", bound=Callable[..., Any])


class Served(Snapshotter[list[Mount]], Protocol):
    """What the service calls: the snapshotter contract, plus containerd's Cleanup."""

    def cleanup(self) -> None:
        """Remove what crashed operations left behind; safe to call at any time."""
        ...


def status_of(error: errors.FsnapError) -> grpc.StatusCode:
    for kind, code in STATUS:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.UNKNOWN


def _translated(method: F) -> F:
    """Run one call: fsnap errors become the matching status, anything else INTERNAL
    (logged with its traceback: a bug of ours, never a reason to stop serving)."""

    @functools.wraps(method)
    def call(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        started = time.monotonic()
        outcome = "ok"
        try:
            return method(self, request, context)
        except errors.FsnapError as exc:
            outcome = f"{type(exc).__name__}: {exc}"
            context.abort(status_of(exc), str(exc))
        except OSError as exc:
            outcome = f"OSError: {exc}"
            context.abort(grpc.StatusCode.UNKNOWN, str(exc))
        except Exception as exc:
            outcome = f"internal error: {exc!r}"
            log.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error: {exc!r}")
        finally:
            key = getattr(request, "key", "") or getattr(request, "name", "")
            log.debug(
                "%s %s -> %s (%.1f ms)",
                method.__name__,
                key,
                outcome,
                (time.monotonic() - started) * 1000,
            )

    return call  # type: ignore[return-value]


def _timestamp(when: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when.astimezone(UTC))
    return stamp


def info_message(info: Info) -> snapshots_pb2.Info:
    return snapshots_pb2.Info(
        name=info.name,
        parent=info.parent,
        kind=KINDS[info.kind],
        created_at=_timestamp(info.created),
        updated_at=_timestamp(info.updated),
        labels=info.labels,
    )


def mount_messages(mounts: list[Mount]) -> list[mount_pb2.Mount]:
    return [mount_pb2.Mount(type=m.type, source=m.source, options=m.options) for m in mounts]


class SnapshotsService(snapshots_pb2_grpc.SnapshotsServicer):
    """Request -> snapshotter call -> reply; nothing else."""

    def __init__(self, backend: Served) -> None:
        self.backend = backend

    @_translated
    def Prepare(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        mounts = self.backend.prepare(request.key, request.parent, dict(request.labels))
        return snapshots_pb2.PrepareSnapshotResponse(mounts=mount_messages(mounts))

    @_translated
    def View(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        mounts = self.backend.view(request.key, request.parent, dict(request.labels))
        return snapshots_pb2.ViewSnapshotResponse(mounts=mount_messages(mounts))

    @_translated
    def Mounts(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return snapshots_pb2.MountsResponse(mounts=mount_messages(self.backend.mounts(request.key)))

    @_translated
    def Commit(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        self.backend.commit(request.name, request.key, dict(request.labels))
        return empty_pb2.Empty()

    @_translated
    def Remove(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        self.backend.remove(request.key)
        return empty_pb2.Empty()

    @_translated
    def Stat(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return snapshots_pb2.StatSnapshotResponse(info=info_message(self.backend.stat(request.key)))

    @_translated
    def Update(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        labels = dict(request.info.labels)
        updated = self.backend.update(request.info.name, labels, list(request.update_mask.paths))
        return snapshots_pb2.UpdateSnapshotResponse(info=info_message(updated))

    @_translated
    def List(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        infos = [info_message(info) for info in self.backend.walk(list(request.filters))]
        return _batches(infos)

    @_translated
    def Usage(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        usage = self.backend.usage(request.key)
        return snapshots_pb2.UsageResponse(size=usage.size, inodes=usage.inodes)

    @_translated
    def Cleanup(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        self.backend.cleanup()
        return empty_pb2.Empty()


def _batches(infos: list[snapshots_pb2.Info]) -> Iterator[snapshots_pb2.ListSnapshotsResponse]:
    for start in range(0, len(infos), LIST_BATCH):
        yield snapshots_pb2.ListSnapshotsResponse(info=infos[start : start + LIST_BATCH])
