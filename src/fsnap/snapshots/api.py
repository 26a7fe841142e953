"""The snapshotter contract: what any fsnap snapshotter does, stated once.

containerd's ``snapshots.Snapshotter`` is the model (its Go interface is its
documentation, and so is this Protocol). Three implementations answer it today:
``fsnap.snapshots.snapshotter.LocalSnapshotter`` (directories and LMDB, what the CLI
uses), ``fsnap.serve.backend.Backend`` (the same store as containerd's proxy plugin sees
it) and ``fsnap.serve.client.RemoteSnapshotter`` (any snapshotter behind containerd's gRPC
API). A future one (lazily fetched layers) implements it too, and the conformance tests
(``tests/test_snapshots.py``, run locally and over gRPC) hold each to it.

**What a snapshot is.** A named file system tree of one of three kinds (``Kind``):

- *active*: writable, made by ``prepare``. Whoever mounts its ``mounts`` may change it.
- *committed*: immutable, made by ``commit`` from an active snapshot. Only a committed
  snapshot may be a parent.
- *view*: read-only, made by ``view``. It can never be committed.

Keys of active and view snapshots and names of committed ones share one namespace:
creating any snapshot under a key that exists already is AlreadyExists.

**The lifecycle of a layer** (how a puller or containerd's applier uses it)::

    stat(chain_id)                    exists: nothing to do
    prepare(tmp_key, parent_chain)    an empty active snapshot over its parent
    ...write the layer into its mounts...
    commit(chain_id, tmp_key)         the layer is now committed under its chain ID
    remove(tmp_key)                   (only on failure, before the commit)

and of a container's root: ``prepare(key, image_top)`` -> mount -> run -> (``commit`` to
keep the changes as a new layer) or ``remove``.

**Mounts are descriptions**, not actions: the type parameter ``MountsT`` is what an
implementation hands out (fsnap's ``Mounts`` overlay description locally, containerd
``Mount`` records over gRPC). The caller mounts them; the snapshotter never does.

Errors are fsnap's typed errors (``fsnap.errors``): NotFound, AlreadyExists,
InvalidArgument, FailedPrecondition, with the meanings each method states.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol, TypeVar, runtime_checkable

import lmdb

from fsnap.snapshots.info import Info, Usage

MountsT = TypeVar("MountsT", covariant=True)


@runtime_checkable
class Snapshotter(Protocol[MountsT]):
    """containerd's snapshotter verbs; see the module docstring for the lifecycle."""

    def stat(self, key: str) -> Info:
        """The metadata of snapshot ``key`` (active, view or committed). NotFound if none."""
        ...

    def update(self, key: str, labels: Mapping[str, str], fieldpaths: Sequence[str] = ()) -> Info:
        """Change ``key``'s labels and nothing else; returns the new ``Info``.

        With no ``fieldpaths`` (or the field path ``labels``) the labels become
        ``labels``; ``labels.<k>`` sets that one label from ``labels``, or deletes it when
        ``labels`` lacks it. Any other field path is InvalidArgument: kind, parent and
        times are the snapshotter's."""
        ...

    def usage(self, key: str) -> Usage:
        """Bytes and inodes of ``key``'s own changes, not its parents'. An active
        snapshot's usage is measured now (it may still change); a committed one's is
        fixed at commit."""
        ...

    def mounts(self, key: str) -> MountsT:
        """The mounts of snapshot ``key``, as ``prepare``/``view`` returned them (asked
        again, e.g. after a restart). NotFound if ``key`` does not exist. For a committed
        snapshot an implementation may answer a read-only stack of it and its parents."""
        ...

    def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> MountsT:
        """Create active snapshot ``key`` over committed ``parent`` (``""``: empty) and
        return its mounts: writable, showing the parent's tree.

        AlreadyExists if ``key`` names any snapshot; NotFound if ``parent`` does not
        exist; InvalidArgument if it is not committed, or if ``key`` is empty. The new
        snapshot's root directory is mode 0755. It stays until ``commit`` or ``remove``."""
        ...

    def view(self, key: str, parent: str, labels: Mapping[str, str] | None = None) -> MountsT:
        """Create view ``key`` of committed ``parent`` and return its read-only mounts
        (writing through them fails with EROFS). Errors as ``prepare``. A view is never
        committed; ``remove`` it when done."""
        ...

    def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        """Turn active ``key`` into committed snapshot ``name``, with the same parent and
        contents; ``key`` stops existing. ``labels`` (when given) replace its labels.

        Whatever was written through ``key``'s mounts must be finished (unmounted) first.
        FailedPrecondition if ``key`` is not active (a view or committed); AlreadyExists if
        ``name`` exists. After a failure ``key`` is still active and unchanged."""
        ...

    def remove(self, key: str) -> None:
        """Delete snapshot ``key`` of any kind and its contents.

        FailedPrecondition while another snapshot names it as parent (remove children
        first: a parent is never removed under a child); NotFound if ``key`` is gone.
        A removed key may be used again by ``prepare``/``view``/``commit``."""
        ...

    def walk(self, filters: Sequence[str] = ()) -> Iterator[Info]:
        """Every snapshot matching any of ``filters`` (containerd's filter syntax:
        ``name``, ``parent``, ``kind``, ``labels."k"`` with ``==``, ``!=``, ``~=``);
        none: all. InvalidArgument for a filter that does not parse."""
        ...

    def close(self) -> None:
        """Release the snapshotter; later calls fail. Closing twice is harmless."""
        ...


class Hold(Protocol):
    """Something outside the snapshotter that keeps an active snapshot from changing
    (a writable mount: ``fsnap.mount.registry``). ``LocalSnapshotter`` asks every hold it
    was given inside the transaction of a commit or a remove, so a hold taken in its own
    transaction and a commit never both succeed."""

    def check(self, txn: lmdb.Transaction, key: str, action: str) -> None:
        """Raise FailedPrecondition (naming ``action``: "commit", "remove") if ``key``
        is held; ``txn`` is the snapshotter's transaction on the shared environment."""
        ...
