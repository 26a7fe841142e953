"""fsnap: a container image snapshotter filesystem.

``fsnap.Client`` is the library's entry point; errors are in ``fsnap.errors``.
"""

from fsnap.client import Client
from fsnap.errors import (
    AlreadyExists,
    DigestMismatch,
    FsnapError,
    InvalidArgument,
    NotFound,
)

__all__ = [
    "AlreadyExists",
    "Client",
    "DigestMismatch",
    "FsnapError",
    "InvalidArgument",
    "NotFound",
]
