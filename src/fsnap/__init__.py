"""fsnap: a container image snapshotter filesystem.

``fsnap.Client`` is the library's entry point; errors are in ``fsnap.errors``.

``Client`` is imported on first use (PEP 562): every ``import fsnap.x`` runs this file, and
the client pulls in LMDB and the stores, which an applier process
(``fsnap.unpack.worker``) or a command's parser does not need.
"""

from typing import TYPE_CHECKING, Any

from fsnap.errors import (
    AlreadyExists,
    DigestMismatch,
    FsnapError,
    InvalidArgument,
    NotFound,
)

if TYPE_CHECKING:
    from fsnap.client import Client

__all__ = [
    "AlreadyExists",
    "Client",
    "DigestMismatch",
    "FsnapError",
    "InvalidArgument",
    "NotFound",
]


def __getattr__(name: str) -> Any:
    if name == "Client":
        from fsnap.client import Client

        return Client
    raise AttributeError(f"module 'fsnap' has no attribute {name!r}")
