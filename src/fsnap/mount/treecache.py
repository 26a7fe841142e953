"""The merged tree of a committed snapshot chain, saved once and reloaded by later mounts.

Building the tree means reading and JSON-decoding every layer's index from LMDB and folding
them; for a committed chain the result never changes (committed snapshots are immutable and
a parent cannot be removed while a child exists). So the first read-only mount of a chain
saves the finished tree in the top snapshot's own directory (``<root>/<id>/merged.tree``):
removing that snapshot retires its directory and takes the cache along, and snapshot ids
are never reused, so a cache can never describe another chain.

The format is ``marshal`` of a dict of flat arrays and byte strings (``fsnap.mount.lazytree``:
loaded without per-entry work, nodes made on demand; ``marshal`` cannot run code), behind a
magic, a version and a sha256 of the payload, so a truncated or damaged file is refused
before it is decoded. ``marshal`` is not hardened against crafted input, so a cache is read
only if the file and its directory belong to us and nobody else may write them; anything
wrong means "rebuild from the indexes", never an error for the user.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import marshal
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from fsnap.mount import lazytree
from fsnap.mount.source import chain_layers
from fsnap.mount.tree import MergedTree, Node
from fsnap.snapshots.info import Info, Kind

if TYPE_CHECKING:
    from fsnap.snapshots.snapshotter import LocalSnapshotter

log = logging.getLogger(__name__)

CACHE_NAME = "merged.tree"
MAGIC = b"fsnaptr\n"
VERSION = 3  # 2: nodes carry their atime; 3: flat arrays, nodes made on demand (lazytree)
_HASH_SIZE = 32


def merged_tree(
    snapshots: LocalSnapshotter, key: str, save_later: list[Callable[[], None]] | None = None
) -> MergedTree:
    """The merged tree of ``key``'s chain: from the cache when the chain is committed and a
    sound cache exists, else built from the indexes (and then saved for the next mount;
    with ``save_later``, the saving is appended there instead, for the caller to run when
    it suits it: a lazy mount's first start runs it once its reads are quiet, since the
    encoding holds the GIL for 0.2-0.35 s at load 10 while python's first reads wait)."""
    chain = snapshots.chain(key)
    dirs = [os.fspath(snapshots.dir(info.name)) for info in chain]
    cacheable = all(info.kind is Kind.COMMITTED for info in chain)
    path = snapshots.state_dir(key) / CACHE_NAME
    if cacheable:
        tree = load(path, chain, dirs)
        if tree is not None:
            return tree
    tree = MergedTree.build(chain_layers(snapshots, chain))
    if cacheable:
        job = functools.partial(save, path, tree, chain, dirs)
        if save_later is None:
            job()
        else:
            save_later.append(job)
    return tree


# --- saving -----------------------------------------------------------------------------


def save(path: Path, tree: MergedTree, chain: list[Info], dirs: list[str]) -> None:
    """Write the cache atomically (temporary file + rename); a failure only costs the next
    mount a rebuild, so it is logged, not raised."""
    payload = marshal.dumps((VERSION, _names(chain), _encode(tree, dirs)))
    data = MAGIC + hashlib.sha256(payload).digest() + payload
    temp = path.with_name(f".{CACHE_NAME}.{secrets.token_hex(6)}")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.rename(temp, path)
    except OSError as exc:
        log.warning("cannot save the merged tree cache %s: %s", path, exc)
        with contextlib.suppress(OSError):
            os.unlink(temp)


def _names(chain: list[Info]) -> tuple[str, ...]:
    return tuple(info.name for info in chain)


def _encode(tree: MergedTree, dirs: list[str]) -> lazytree.Encoded:
    return lazytree.encode(tree, (_relative(n, dirs) for n in tree.nodes[1:] if n is not None))


def _relative(node: Node, dirs: list[str]) -> str | None:
    """A file's content path relative to its layer's directory, so a cache stays right if
    the store is moved; a path outside it (none today) is kept absolute."""
    if node.source is None:
        return None
    base = dirs[node.layer] + os.sep if 0 <= node.layer < len(dirs) else None
    if base is not None and node.source.startswith(base):
        return node.source[len(base) :]
    return node.source


# --- loading ----------------------------------------------------------------------------


def load(path: Path, chain: list[Info], dirs: list[str]) -> MergedTree | None:
    """The cached tree, or None when there is none or it cannot be trusted or decoded."""
    payload = _trusted_payload(path)
    if payload is None:
        return None
    try:
        version, names, columns = marshal.loads(payload)
        if version != VERSION or tuple(names) != _names(chain):
            log.warning("merged tree cache %s is for another chain: rebuilding", path)
            return None
        tree = lazytree.decode(columns, dirs)
    except (ValueError, TypeError, EOFError, IndexError, KeyError, AttributeError):
        log.warning("merged tree cache %s cannot be decoded: rebuilding", path)
        return None
    tree.layer_names = list(names)
    return tree


def _trusted_payload(path: Path) -> bytes | None:
    """The file's payload if it is ours, unwritable by others and intact."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot open merged tree cache %s: %s", path, exc)
        return None
    try:
        if not (_owned(os.fstat(fd)) and _owned(os.stat(path.parent), directory=True)):
            log.warning("merged tree cache %s is not safely ours: ignoring it", path)
            return None
        with os.fdopen(os.dup(fd), "rb") as src:
            data = src.read()
    except OSError as exc:
        log.warning("cannot read merged tree cache %s: %s", path, exc)
        return None
    finally:
        os.close(fd)
    head = len(MAGIC) + _HASH_SIZE
    payload = data[head:]
    if data[: len(MAGIC)] != MAGIC or hashlib.sha256(payload).digest() != data[len(MAGIC) : head]:
        log.warning("merged tree cache %s is damaged: rebuilding", path)
        return None
    return payload


def _owned(st: os.stat_result, directory: bool = False) -> bool:
    kind_ok = stat.S_ISDIR(st.st_mode) if directory else stat.S_ISREG(st.st_mode)
    return kind_ok and st.st_uid == os.geteuid() and not st.st_mode & 0o022
