"""Repairing what ``fsnap.check.findings`` found, in an order where each step can rely on
the ones before it:

1. private directories: mode 0700, owned by the owner of the store's root;
2. abandoned downloads: removed (gc's sweep, which keeps any a writer picks up meanwhile);
3. broken blobs (file missing, wrong size or digest): record and file removed; blob files
   without a record: removed;
4. images naming missing blobs: pulled again (``pull``; only if the registry answers);
5. broken committed snapshots (directory missing or unlike its index): removed together
   with the committed snapshots built on them, children first, but only when every one of
   them is part of an image whose blobs are all in the store (so step 6 brings them back).
   An active or view snapshot (the user's) is never removed: if one builds on a broken
   snapshot, or a mount reads it, the problem is left with that reason;
6. images whose snapshot is gone: unpacked again from the content store;
7. gc labels still naming nothing, on blobs and snapshots no image reaches: dropped.

Every step reports what it did in the problems' ``action``; ``check_store`` then looks again.
"""

from __future__ import annotations

import functools
import os
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from fsnap import leases
from fsnap.check.findings import (
    BLOB,
    IMAGE,
    INGEST,
    LABEL,
    PERMISSION,
    SNAPSHOT,
    Problem,
    labels,
    reach,
)
from fsnap.errors import FsnapError, InvalidArgument
from fsnap.gc import sweep
from fsnap.images.manifest import (
    ImageConfig,
    Manifest,
    kind_of,
    load_document,
    parse_config,
    parse_index,
    parse_manifest,
)
from fsnap.pull import LayerSink
from fsnap.snapshots.info import Info, Kind

if TYPE_CHECKING:
    from fsnap.client import Client
    from fsnap.content.store import ContentStore
    from fsnap.images.store import Image
    from fsnap.oci import Descriptor

# Nested indexes followed when re-unpacking from the store (a pull stored at most this).
MAX_INDEX_DEPTH = 8


def repair_store(client: Client, problems: list[Problem], pull: Callable[[str], object]) -> None:
    """Act on ``problems`` (see the module docstring); each gets its ``action``."""
    by_kind: dict[str, list[Problem]] = {}
    for problem in problems:
        if not problem.fixed:
            by_kind.setdefault(problem.kind, []).append(problem)
    for problem in by_kind.get(PERMISSION, []):
        problem.action = _make_private(client, problem.subject)
    for problem in by_kind.get(INGEST, []):
        problem.action = _remove_ingest(client, problem.subject)
    for problem in by_kind.get(BLOB, []):
        problem.action = _remove_blob(client, problem)
    pulled = _pull_incomplete(client, pull)
    for problem in by_kind.get(IMAGE, []):
        problem.action = pulled.get(problem.subject, "")
    for problem in by_kind.get(SNAPSHOT, []):
        problem.action = _remove_broken_snapshot(client, problem.subject)
    unpacked = _unpack_missing(client)
    for problem in by_kind.get(BLOB, []) + by_kind.get(SNAPSHOT, []):
        done = [f"{name}: {what}" for name, what in {**pulled, **unpacked}.items()]
        if done and not problem.action.startswith("left"):
            problem.action += "; images restored: " + "; ".join(done)
    _drop_dangling_labels(client, by_kind.get(LABEL, []))


# -- 1-3: directories, downloads, blobs --------------------------------------------------------


def _make_private(client: Client, name: str) -> str:
    owner = client.root.stat()
    path = client.root / name
    os.chown(path, owner.st_uid, owner.st_gid, follow_symlinks=False)
    os.chmod(path, 0o700)
    return f"set mode 0700, owner {owner.st_uid}:{owner.st_gid}"


def _remove_ingest(client: Client, name: str) -> str:
    removed = sweep.remove_ingest(client.content, name)
    return "removed" if removed else "left: a writer took it up again"


def _remove_blob(client: Client, problem: Problem) -> str:
    content = client.content
    if problem.issue == "file without a record":
        content.path(problem.subject).unlink(missing_ok=True)
        return "removed the file"
    try:
        content.delete(problem.subject)
    except FsnapError:
        return "already gone"
    return "removed record and file"


# -- 4: images with missing blobs ---------------------------------------------------------------


def _pull_incomplete(client: Client, pull: Callable[[str], object]) -> dict[str, str]:
    """Pull again every image that names a missing blob: image name -> what happened."""
    done = {}
    for image in client.images.list():
        if not reach(client.content, image.target.digest).missing:
            continue
        try:
            pull(image.name)
        except FsnapError as exc:
            done[image.name] = f"left: pulling it again failed: {exc}"
        else:
            done[image.name] = "pulled again from its registry"
    return done


# -- 5: broken snapshots ------------------------------------------------------------------------


def _remove_broken_snapshot(client: Client, name: str) -> str:
    from fsnap.mount.records import snapshots_in_use

    sn = client.snapshots
    infos = {info.name: info for info in sn.walk()}
    if name not in infos:
        return "already gone"
    doomed = _subtree(infos, name)
    users = [n for n in doomed if infos[n].kind is not Kind.COMMITTED]
    if users:
        return (
            f"left: {infos[users[0]].kind.value} snapshot {users[0]} is the user's "
            "(commit or remove it, then repair again)"
        )
    mounted = sorted(set(doomed) & snapshots_in_use(client.root))
    if mounted:
        return f"left: a mount reads {mounted[0]}; unmount it, then repair again"
    restorable = _restorable_snapshots(client)
    lost = [n for n in doomed if n not in restorable]
    if lost:
        return (
            f"left: no image in the store can restore {lost[0]} "
            "(pull its image again, or remove it with `fsnap snapshots rm`)"
        )
    for victim in reversed(doomed):  # breadth-first order reversed: children first
        sn.remove(victim)
    extra = f" and {len(doomed) - 1} built on it" if len(doomed) > 1 else ""
    return f"removed{extra} to unpack again"


def _subtree(infos: dict[str, Info], name: str) -> list[str]:
    """``name`` and every snapshot built on it, breadth first."""
    children: dict[str, list[str]] = {}
    for info in infos.values():
        children.setdefault(info.parent, []).append(info.name)
    order, queue = [], deque([name])
    while queue:
        current = queue.popleft()
        order.append(current)
        queue.extend(sorted(children.get(current, [])))
    return order


def _restorable_snapshots(client: Client) -> set[str]:
    """Snapshots in the chain of an image whose blobs are all in the store."""
    names: set[str] = set()
    for image in client.images.list():
        found = reach(client.content, image.target.digest)
        if found.missing:
            continue
        for top in found.snapshots:
            names.update(_chain_names(client, top))
    return names


def _chain_names(client: Client, top: str) -> list[str]:
    try:
        return [info.name for info in client.snapshots.chain(top)]
    except FsnapError:
        return [top]  # broken chain: at least the top is the image's


# -- 6: unpacking again -------------------------------------------------------------------------


def _unpack_missing(client: Client) -> dict[str, str]:
    """Unpack again, from the content store, every image whose snapshot is gone."""
    present = {info.name for info in client.snapshots.walk()}
    done = {}
    for image in client.images.list():
        found = reach(client.content, image.target.digest)
        if found.missing or found.snapshots <= present:
            continue
        try:
            unpack_stored(client, image)
        except FsnapError as exc:
            done[image.name] = f"left: unpacking it again failed: {exc}"
        else:
            done[image.name] = "unpacked again from the content store"
            present = {info.name for info in client.snapshots.walk()}
    return done


def unpack_stored(client: Client, image: Image) -> None:
    """Unpack ``image``'s layers again from the blobs in the store, as a pull would
    (``fsnap.unpack``: snapshots that exist are kept, the rest applied and committed)."""
    from fsnap.unpack.unpacker import pull_unpacked

    manifests = stored_manifests(client.content, image.target)

    async def feed(sink: LayerSink) -> None:
        for manifest, config in manifests:
            await sink.manifest_ready(manifest, config)

    run = functools.partial(
        pull_unpacked, feed, client.snapshots, client.content, client.root / "unpack"
    )
    with leases.acquire(client.db, f"check --repair {image.name}"):
        trio.run(run)


def stored_manifests(
    content: ContentStore, desc: Descriptor, depth: int = 0
) -> list[tuple[Manifest, ImageConfig]]:
    """The manifests (with configs) under ``desc`` that the store holds."""
    if depth > MAX_INDEX_DEPTH:
        raise InvalidArgument(f"{desc.digest}: indexes nested deeper than {MAX_INDEX_DEPTH}")
    doc = load_document(desc, content.read(desc.digest))
    if kind_of(desc, doc) == "index":
        found = []
        for child in parse_index(desc, doc).manifests:
            if content.exists(child.digest):
                found += stored_manifests(content, child, depth + 1)
        return found
    manifest = parse_manifest(desc, doc)
    return [(manifest, parse_config(manifest.config, content.read(manifest.config.digest)))]


# -- 7: labels ------------------------------------------------------------------------------------


def _drop_dangling_labels(client: Client, found: list[Problem]) -> None:
    """Drop the gc labels that still name nothing, unless an image reaches their owner
    (then that image's own problem says why it could not be restored)."""
    reached: set[str] = set()
    for image in client.images.list():
        reached |= reach(client.content, image.target.digest).present
    still = {p.ident for p in labels(client)}
    for problem in found:
        if problem.ident not in still:
            continue
        owner, key = problem.subject.rsplit(" ", 1)
        if owner in reached:
            problem.action = "left: an image reaches it (see the image's problem)"
        elif owner.startswith("snapshot "):
            client.snapshots.update(owner.removeprefix("snapshot "), {}, [f"labels.{key}"])
            problem.action = "dropped the label"
        else:
            client.content.update_labels(owner, {key: ""})
            problem.action = "dropped the label"
