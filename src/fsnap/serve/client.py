"""A client of containerd's snapshots API (any proxy snapshotter, ``fsnap serve`` first).

It is a ``fsnap.snapshots.Snapshotter[list[Mount]]`` (prepare, view, mounts, commit,
remove, stat, update, walk, usage, close; plus cleanup and chain) and raises fsnap's
typed errors for the gRPC codes containerd's ``errdefs`` uses, so the same checks run
against the local snapshotter and against a server. Mounts come back as containerd
``Mount`` records.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import field_mask_pb2

from fsnap import errors
from fsnap.serve.api import snapshots_pb2, snapshots_pb2_grpc
from fsnap.serve.backend import Mount
from fsnap.serve.service import KINDS, STATUS
from fsnap.snapshots.api import Snapshotter
from fsnap.snapshots.info import Info, Usage

KIND_OF = {value: kind for kind, value in KINDS.items()}
ERROR_OF = {code: kind for kind, code in reversed(STATUS)}


class RemoteSnapshotter:
    """Snapshotter verbs over gRPC to the server at ``address`` (a Unix socket)."""

    def __init__(self, address: Path, snapshotter: str = "fsnap", timeout: float = 60.0) -> None:
        self.channel = grpc.insecure_channel(f"unix:{address}")
        self.stub = snapshots_pb2_grpc.SnapshotsStub(self.channel)  # type: ignore[no-untyped-call]
        self.name = snapshotter
        self.timeout = timeout

    def close(self) -> None:
        self.channel.close()

    def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        request = snapshots_pb2.PrepareSnapshotRequest(
            snapshotter=self.name, key=key, parent=parent, labels=dict(labels or {})
        )
        return _mounts(self._call(self.stub.Prepare, request).mounts)

    def view(self, key: str, parent: str, labels: Mapping[str, str] | None = None) -> list[Mount]:
        request = snapshots_pb2.ViewSnapshotRequest(
            snapshotter=self.name, key=key, parent=parent, labels=dict(labels or {})
        )
        return _mounts(self._call(self.stub.View, request).mounts)

    def mounts(self, key: str) -> list[Mount]:
        request = snapshots_pb2.MountsRequest(snapshotter=self.name, key=key)
        return _mounts(self._call(self.stub.Mounts, request).mounts)

    def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        request = snapshots_pb2.CommitSnapshotRequest(
            snapshotter=self.name, name=name, key=key, labels=dict(labels or {})
        )
        self._call(self.stub.Commit, request)

    def remove(self, key: str) -> None:
        request = snapshots_pb2.RemoveSnapshotRequest(snapshotter=self.name, key=key)
        self._call(self.stub.Remove, request)

    def stat(self, key: str) -> Info:
        request = snapshots_pb2.StatSnapshotRequest(snapshotter=self.name, key=key)
        return _info(self._call(self.stub.Stat, request).info)

    def update(self, key: str, labels: Mapping[str, str], fieldpaths: Sequence[str] = ()) -> Info:
        request = snapshots_pb2.UpdateSnapshotRequest(
            snapshotter=self.name,
            info=snapshots_pb2.Info(name=key, labels=dict(labels)),
            update_mask=field_mask_pb2.FieldMask(paths=list(fieldpaths)),
        )
        return _info(self._call(self.stub.Update, request).info)

    def chain(self, key: str) -> list[Info]:
        """``key`` and its ancestors, bottom first (from Stat calls, as the API has no
        chain verb)."""
        infos = [self.stat(key)]
        while infos[-1].parent:
            infos.append(self.stat(infos[-1].parent))
        return infos[::-1]

    def walk(self, filters: Sequence[str] = ()) -> Iterator[Info]:
        request = snapshots_pb2.ListSnapshotsRequest(snapshotter=self.name, filters=list(filters))
        try:
            replies = list(self.stub.List(request, timeout=self.timeout))
        except grpc.RpcError as exc:
            raise _error(exc) from None
        return (_info(info) for reply in replies for info in reply.info)

    def usage(self, key: str) -> Usage:
        request = snapshots_pb2.UsageRequest(snapshotter=self.name, key=key)
        reply = self._call(self.stub.Usage, request)
        return Usage(size=reply.size, inodes=reply.inodes)

    def cleanup(self) -> None:
        self._call(self.stub.Cleanup, snapshots_pb2.CleanupRequest(snapshotter=self.name))

    def _call(self, method: grpc.UnaryUnaryMultiCallable, request: object) -> Any:
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise _error(exc) from None


def _error(exc: grpc.RpcError) -> errors.FsnapError:
    code = exc.code()
    kind = ERROR_OF.get(code, errors.Unavailable if code == grpc.StatusCode.UNAVAILABLE else None)
    message = exc.details() or str(code)
    return (kind or errors.FsnapError)(message)


def _mounts(messages: Sequence[Any]) -> list[Mount]:
    return [Mount(m.type, m.source, tuple(m.options)) for m in messages]


def _info(message: snapshots_pb2.Info) -> Info:
    return Info(
        name=message.name,
        kind=KIND_OF[message.kind],
        parent=message.parent,
        labels=dict(message.labels),
        created=message.created_at.ToDatetime(UTC),
        updated=message.updated_at.ToDatetime(UTC),
    )


if TYPE_CHECKING:  # (mypy holds the class to the contract, verb by verb)
    _CONTRACT: type[Snapshotter[list[Mount]]] = RemoteSnapshotter
