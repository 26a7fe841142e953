"""Digest strings (``algorithm:hex``): validation and hashing helpers."""

from __future__ import annotations

import hashlib
import re

from fsnap.errors import InvalidArgument

_DIGEST = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$")


def validate(digest: str) -> str:
    """Return ``digest`` if well formed, else raise InvalidArgument naming it."""
    if not _DIGEST.match(digest):
        raise InvalidArgument(f"invalid digest {digest!r}: expected sha256:<64 hex digits>")
    return digest


def hasher(digest: str) -> hashlib._Hash:
    """A fresh hash object of the algorithm ``digest`` names."""
    algorithm = validate(digest).split(":", 1)[0]
    return hashlib.new(algorithm)


def sha256_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chain_id(diff_ids: list[str]) -> str:
    """The OCI chain ID of a stack of layers (bottom first), as the image spec defines it
    (``config.md``, "Layer ChainID"): ChainID(L1) = DiffID(L1); ChainID(L1..Ln) = sha256 of
    ``ChainID(L1..Ln-1) + " " + DiffID(Ln)``."""
    if not diff_ids:
        raise InvalidArgument("chain ID of no layers")
    chain = validate(diff_ids[0])
    for diff_id in diff_ids[1:]:
        chain = sha256_of(f"{chain} {validate(diff_id)}".encode("ascii"))
    return chain


def chain_ids(diff_ids: list[str]) -> list[str]:
    """Chain IDs of every prefix of ``diff_ids``: element i is ChainID(L1..Li+1)."""
    out: list[str] = []
    for diff_id in diff_ids:
        validate(diff_id)
        out.append(diff_id if not out else sha256_of(f"{out[-1]} {diff_id}".encode("ascii")))
    return out
