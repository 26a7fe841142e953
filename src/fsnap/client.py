"""``fsnap.Client``: one object that owns the stores under an fsnap root.

The CLI does nothing a Python caller cannot do through this class. Stores are opened lazily
so that a command touches only what it needs, and the LMDB environment is opened in the
process that uses it (never across fork: ``fsnap.db``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fsnap.content.store import ContentStore
    from fsnap.db import Database
    from fsnap.gc import GCReport
    from fsnap.images.store import Image, ImageStore
    from fsnap.lazy.access import RegistryAccess
    from fsnap.lazy.early import EarlyDownloads
    from fsnap.lazy.pull import LazyLayers
    from fsnap.mount.manager import MountOptions
    from fsnap.mount.records import MountInfo
    from fsnap.mount.registry import WritableMounts
    from fsnap.mount.stores import MountStores
    from fsnap.oci import Descriptor, Platform
    from fsnap.progress import CommitProgress, PullProgress, PushProgress
    from fsnap.pull import LayerSink
    from fsnap.remotes.auth import Credentials
    from fsnap.snapshots.info import Info
    from fsnap.snapshots.snapshotter import LocalSnapshotter
    from fsnap.unpack.blob import SizeLimit


def _check_private(root: Path) -> dict[str, os.stat_result]:
    """Make the store's private directories (``fsnap.private``) 0700 and its owner's;
    returns what each repaired one was before (``fsnap check`` reports those)."""
    from fsnap.private import PRIVATE_DIRS, keep_private

    owner = os.stat(root)
    before = {name: keep_private(root / name, owner) for name in PRIVATE_DIRS}
    return {name: st for name, st in before.items() if st is not None}


def _make_root(root: Path) -> None:
    """Create the store's directory if it is missing; a path that cannot be one is an error
    naming the store (``--root``), not the bare ``mkdir`` failure ("[Errno 17] File
    exists"). A full disk stays the OSError the CLI reports as out of space."""
    import errno

    from fsnap.errors import FailedPrecondition, InvalidArgument

    try:
        root.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InvalidArgument(f"store {root} (--root) is not a directory") from None
    except NotADirectoryError:
        raise InvalidArgument(f"store {root} (--root): a directory above it is a file") from None
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise FailedPrecondition(f"cannot create store {root} (--root): {exc.strerror}") from None


def _has_entries(path: Path) -> bool:
    try:
        with os.scandir(path) as entries:
            return any(True for _ in entries)
    except FileNotFoundError:
        return False


class Client:
    """Entry point of the library: ``with Client(root) as c: c.pull(...)``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._db: Database | None = None
        self._content: ContentStore | None = None
        self._images: ImageStore | None = None
        self._snapshots: LocalSnapshotter | None = None
        self._writable_mounts: WritableMounts | None = None
        # Private directories found wrong (and repaired) when the store was opened: name ->
        # their stat before the repair.
        self.private_repairs: dict[str, os.stat_result] = {}

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def db(self) -> Database:
        if self._db is None:
            from fsnap.db import Database  # (LMDB: not for commands that open no store)

            _make_root(self.root)
            self._db = Database(self.root)
            self.private_repairs = _check_private(self.root)
            if _has_entries(self.root / "unpack"):  # a pull runs, or one was killed
                _ = self.snapshots  # opening the snapshotter removes dead sessions
        return self._db

    @property
    def content(self) -> ContentStore:
        if self._content is None:
            from fsnap.content.store import ContentStore

            self._content = ContentStore(self.root / "content", self.db)
        return self._content

    @property
    def images(self) -> ImageStore:
        if self._images is None:
            from fsnap.images.store import ImageStore

            self._images = ImageStore(self.db)
        return self._images

    @property
    def writable_mounts(self) -> WritableMounts:
        """Which snapshots are mounted writable (a hold on the snapshotter's commit/remove)."""
        if self._writable_mounts is None:
            from fsnap.mount.registry import WritableMounts

            self._writable_mounts = WritableMounts(self.db)
        return self._writable_mounts

    @property
    def snapshots(self) -> LocalSnapshotter:
        """The snapshotter; opening it also removes what dead pulls staged (``unpack/``)."""
        db = self.db  # (first: opening the database may open the snapshotter already)
        if self._snapshots is None:
            from fsnap.snapshots.snapshotter import LocalSnapshotter
            from fsnap.unpack.staging import clean_stale

            holds = [self.writable_mounts]
            self._snapshots = LocalSnapshotter(self.root / "snapshots", db, holds)
            clean_stale(self.root / "unpack", self._snapshots, warn=True)
        return self._snapshots

    def pull(
        self,
        ref: str,
        *,
        platform: Platform | None = None,
        all_platforms: bool = False,
        plain_http: bool | None = None,
        credentials: Credentials | None = None,
        ca_file: Path | None = None,
        max_concurrent_downloads: int = 3,
        progress: PullProgress | None = None,
        sink: LayerSink | None = None,
        unpack: bool = True,
        registry_factory: Callable[..., Any] | None = None,
        blob_deadline: float | None = None,
        layer_limit: SizeLimit | None = None,
        lazy: bool = False,
        lazy_started: Callable[[Descriptor], None] | None = None,
    ) -> Image:
        """Pull ``ref`` into the content store and record it.

        Runs its own trio loop, so it cannot be called from async code: there, await
        ``fsnap.pull.pull_image`` instead. ``sink`` receives layers while they download.

        With ``unpack`` (the default, as ``ctr pull``) each layer of the image for
        ``platform`` (else this host) also becomes a committed snapshot named by its chain
        ID, applied while it downloads (``fsnap.unpack``); ``sink`` still gets its calls.
        ``registry_factory`` replaces the registry client (``fsnap import`` reads archives).
        ``blob_deadline``: seconds each blob may take in all (``fsnap.limits.BLOB_DEADLINE``);
        ``layer_limit``: what a layer may unpack to (``fsnap.unpack.apply.SizeLimit``).
        ``lazy``: seekable layers (eStargz, zstd:chunked) become snapshots from their TOC
        alone, their files fetched on first read (``fsnap.lazy``); needs ``unpack``.
        ``lazy_started(desc)``: told each lazy layer as the pull starts on it (from the
        pull's thread; ``fsnap.lazy.early`` downloads its blob meanwhile).
        """
        import functools

        import trio

        from fsnap.leases import acquire
        from fsnap.limits import BLOB_DEADLINE
        from fsnap.pull import pull_image

        pull = functools.partial(
            pull_image,
            self.content,
            self.images,
            ref,
            platform=platform,
            all_platforms=all_platforms,
            plain_http=plain_http,
            credentials=credentials,
            ca_file=ca_file,
            max_concurrent_downloads=max_concurrent_downloads,
            progress=progress,
            blob_deadline=BLOB_DEADLINE if blob_deadline is None else blob_deadline,
        )
        if registry_factory is not None:
            pull = functools.partial(pull, registry_factory=registry_factory)
        # The lease makes a concurrent `fsnap gc` keep what this pull creates before the
        # image record references it (see fsnap.leases).
        if not unpack:
            with acquire(self.db, f"pull {ref}"):
                return trio.run(functools.partial(pull, sink=sink))
        from fsnap.unpack.fanout import FanOut
        from fsnap.unpack.unpacker import pull_unpacked

        async def unpack_all(layers: LazyLayers | None) -> Image:
            async def pull_into(unpacker: LayerSink) -> Image:
                fed = unpacker if sink is None else FanOut(sink, unpacker)
                skip = None if layers is None else layers.skip
                return await pull(sink=fed, record=False, skip_layer=skip)

            return await pull_unpacked(
                pull_into,
                self.snapshots,
                self.content,
                self.root / "unpack",
                platform=platform,
                progress=progress,
                limit=layer_limit,
                lazy=layers,
            )

        async def run() -> Image:
            if not lazy:
                return await unpack_all(None)
            from fsnap.lazy.pull import open_lazy  # (7 modules a plain pull does without)

            opened = open_lazy(ref, plain_http, credentials, ca_file, layer_limit, lazy_started)
            async with opened as layers:
                return await unpack_all(layers)

        with acquire(self.db, f"pull {ref}"):
            image = trio.run(run)
            # Only now, every layer a committed snapshot: a failed unpack records nothing.
            return self.images.create_or_update(image)

    def import_archive(
        self, path: Path, *, name: str | None = None, unpack: bool = True
    ) -> list[Image]:
        """Import a ``docker save`` tar or an OCI layout (directory or tar): every image in
        it (or the only one, as ``name``) goes through the pull pipeline (``fsnap.transfer``)."""
        from functools import partial

        from fsnap.transfer.importer import import_archive

        return import_archive(partial(self.pull, unpack=unpack), self.content, path, name)

    def export(self, refs: list[str], out: Path, fmt: str = "oci-archive") -> None:
        """Write images as ``oci-archive``, ``oci-dir`` or ``docker-archive`` to ``out``."""
        from fsnap.transfer.exporter import export_images

        for ref in refs:
            self._require_complete(ref, f"export {ref}")
        export_images(self.content, self.images, refs, out, fmt)

    def export_rootfs(self, ref: str, out: Path) -> None:
        """Write ``ref``'s merged root file system to ``out`` as one tar."""
        from fsnap.mount.source import image_snapshot, snapshot_layers
        from fsnap.mount.tree import MergedTree
        from fsnap.transfer.exporter import export_rootfs

        self._require_complete(ref, f"export the files of {ref}")
        top = image_snapshot(self.content, self.images, ref)
        tree = MergedTree.build(snapshot_layers(self.snapshots, top))
        export_rootfs(tree, out)

    def _require_complete(self, ref: str, doing: str) -> None:
        """Refuse ``doing`` with image ``ref`` while its layers for this host are lazy (see
        ``fsnap.lazy.state.require_complete``); an image that is missing or not unpacked
        is left for the operation itself to report."""
        from fsnap.errors import FailedPrecondition, NotFound
        from fsnap.lazy.state import require_complete
        from fsnap.mount.source import image_snapshot

        try:
            top = image_snapshot(self.content, self.images, ref)
            chain = self.snapshots.chain(top)
        except (NotFound, FailedPrecondition):
            return
        sources = " or ".join(f"`fsnap pull {r}`" for r in self._lazy_sources(chain) or [ref])
        require_complete(chain, doing, f"{sources} completes them")

    def _lazy_sources(self, chain: list[Info]) -> list[str]:
        """The images the lazy layers of ``chain`` were pulled from (their records say):
        an image committed or tagged on a lazy one is not in any registry, its base is."""
        from fsnap.errors import FsnapError
        from fsnap.labels import LAZY_LABEL
        from fsnap.lazy.state import read_record

        sources = set()
        for info in chain:
            if LAZY_LABEL in info.labels:
                with contextlib.suppress(FsnapError, OSError):
                    sources.add(read_record(self.snapshots.state_dir(info.name)).reference)
        return sorted(sources)

    def tag(self, source: str, new: str) -> Image:
        """Record ``new`` naming the image ``source`` names (``fsnap tag``)."""
        from dataclasses import replace

        from fsnap.images.resolve import find
        from fsnap.reference import Reference

        image = find(self.images, source)
        return self.images.create_or_update(replace(image, name=str(Reference.parse(new))))

    def commit_image(
        self,
        key: str,
        new_ref: str,
        compression: str = "gzip",
        *,
        base: str | None = None,
        left_out: Callable[[list[str]], None] | None = None,
        progress: CommitProgress | None = None,
    ) -> Image:
        """Record ``new_ref``: the base image of snapshot ``key`` plus ``key``'s diff as one
        new layer (``gzip``, ``zstd`` or ``none``); see ``fsnap.diff.commit`` (``left_out``
        gets the paths of sockets the layer leaves out)."""
        from fsnap.archive.compression import Compression
        from fsnap.diff.commit import commit_image
        from fsnap.errors import InvalidArgument

        try:
            kind = Compression(compression)
        except ValueError:
            raise InvalidArgument(f"unknown compression {compression!r}") from None
        return commit_image(
            self.content,
            self.images,
            self.snapshots,
            key,
            new_ref,
            compression=kind,
            base_ref=base,
            left_out=left_out,
            progress=progress,
        )

    def convert_image(
        self,
        source: str,
        new_ref: str,
        fmt: str,
        *,
        prefetch: Sequence[str] = (),
        chunk_size: int | None = None,
        on_layer: Callable[[Descriptor, Descriptor], None] | None = None,
    ) -> Image:
        """Record ``new_ref``: image ``source`` with its layers as ``estargz`` or
        ``zstd-chunked`` (prioritised files first: ``prefetch``; files cut into pieces of
        ``chunk_size`` bytes, default 4 MiB); see ``fsnap.convert``."""
        from fsnap.convert.framing import DEFAULT_CHUNK_SIZE
        from fsnap.convert.image import Format, convert_image
        from fsnap.errors import InvalidArgument

        try:
            kind = Format(fmt)
        except ValueError:
            raise InvalidArgument(f"unknown seekable format {fmt!r}") from None
        return convert_image(
            self.content,
            self.images,
            self.snapshots,
            source,
            new_ref,
            kind,
            prefetch=prefetch,
            chunk_size=DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size,
            on_layer=on_layer,
        )

    def push(
        self,
        ref: str,
        target: str | None = None,
        *,
        plain_http: bool | None = None,
        credentials: Credentials | None = None,
        ca_file: Path | None = None,
        progress: PushProgress | None = None,
        chunk_size: int | None = None,
    ) -> Descriptor:
        """Push image ``ref`` from the store to ``target`` (default ``ref``) and return the
        pushed descriptor. Runs its own trio loop: async callers await
        ``fsnap.push.push_image``."""
        import functools

        import trio

        from fsnap.push import push_image

        self._require_complete(ref, f"push {ref}")
        options: dict[str, Any] = {} if chunk_size is None else {"chunk_size": chunk_size}
        run = functools.partial(
            push_image,
            self.content,
            self.images,
            ref,
            target,
            plain_http=plain_http,
            credentials=credentials,
            ca_file=ca_file,
            progress=progress,
            **options,
        )
        return trio.run(run)

    def login(
        self,
        registry: str,
        credentials: Credentials,
        *,
        plain_http: bool | None = None,
        ca_file: Path | None = None,
    ) -> str:
        """Check ``credentials`` with ``registry`` (host[:port]) and store them in docker's
        credential store (``$DOCKER_CONFIG/config.json`` or its credential helper); returns
        where they went. Unauthorized if the registry refuses them."""
        import functools

        import trio

        from fsnap.remotes.login import login

        run = functools.partial(
            login, registry, credentials, plain_http=plain_http, ca_file=ca_file
        )
        return trio.run(run)

    def logout(self, registry: str) -> bool:
        """Forget ``registry``'s stored credentials; False if there were none."""
        from fsnap.remotes.login import logout

        return logout(registry)

    def mount(
        self,
        ref: str,
        mountpoint: str | os.PathLike[str],
        options: MountOptions | None = None,
        *,
        writable: bool = False,
        key: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> MountInfo:
        """Mount image ``ref``'s root file system at ``mountpoint`` (``fsnap mount``):
        read-only, or ``writable`` on a new active snapshot ``key`` (default
        ``<image name>-rw-<random>``; it outlives the mount) with ``labels`` besides
        ``fsnap.io/image``, set as it is created. ``options.pull`` pulls a
        missing image first; ``options.foreground`` serves from this process until
        unmounted. Returns the mount's record (``fsnap.mount.manager``)."""
        from fsnap.errors import InvalidArgument
        from fsnap.mount import manager

        if (key is not None or labels) and not writable:
            raise InvalidArgument("a snapshot key or labels are for writable mounts only")
        options = options or manager.MountOptions()
        mnt = manager.check_mountpoint(self.root, mountpoint)  # before a pull, not after it
        pull = options.pull or options.lazy
        launch = None  # starts the supervisor while we pull
        started = None  # the early downloads' hook, if any
        with contextlib.ExitStack() as early:
            if pull and not options.foreground and not self._has_image(ref):
                launch = manager.LaunchOnResolve(self.root, mnt, options.lazy)
                early.callback(launch.abandon)  # (unless it serves the mount now)
                if options.lazy and not options.no_background_fetch:
                    started = early.enter_context(self._early_downloads(ref, options.access)).want
            top = self._image_top(ref, pull, options.lazy, options.access, started, launch)
            launched = None if launch is None else launch.launched
            if writable:
                return manager.mount_image_writable(
                    self.mount_stores(), ref, top, mountpoint, key, options, launched, labels
                )
            return manager.mount_image(self.mount_stores(), ref, top, mountpoint, options, launched)

    def _early_downloads(self, ref: str, access: RegistryAccess | None) -> EarlyDownloads:
        """The lazy layers' blob downloads a lazy ``mount --pull`` starts as it pulls and
        stops once its mount serves (``fsnap.lazy.early``), with the pull's registry options."""
        from fsnap.lazy.early import EarlyDownloads

        if access is None:
            return EarlyDownloads(self.content, ref)
        return EarlyDownloads(
            self.content,
            ref,
            plain_http=access.plain_http,
            credentials=access.credentials(),
            ca_file=access.ca_path(),
        )

    def mount_snapshot(
        self, key: str, mountpoint: str | os.PathLike[str], options: MountOptions | None = None
    ) -> MountInfo:
        """Mount snapshot ``key`` over its parents (``fsnap snapshots mount``): writable if it
        is active, else read-only."""
        from fsnap.mount import manager

        return manager.mount_snapshot(self.mount_stores(), key, mountpoint, options)

    def umount(self, mountpoint: str | os.PathLike[str]) -> MountInfo:
        """Unmount an fsnap mount (lazily if busy), stop its daemon, drop its record; a
        writable mount's snapshot stays (``fsnap umount``)."""
        from fsnap.mount import manager

        return manager.umount(self.mount_stores(), mountpoint)

    def mounts(self) -> list[MountInfo]:
        """Every recorded mount with its state (``fsnap mounts``)."""
        from fsnap.mount.records import list_mounts

        return list_mounts(self.root)

    def rmi(self, ref: str) -> Image:
        """Forget image ``ref`` (as stored or as ``fsnap pull`` names it) and return its
        record; Busy while it is mounted. Its blobs and snapshots wait for ``gc``."""
        from fsnap.gc.rmi import remove_image
        from fsnap.images.resolve import find
        from fsnap.mount.records import list_mounts

        return remove_image(self.images, find(self.images, ref).name, list_mounts(self.root))

    def gc(self, *, dry_run: bool = False) -> GCReport:
        """Remove what no image, mount, snapshot or live lease holds (``fsnap gc``), after
        reaping dead ``fsnap run``s; with ``dry_run`` only report what would go."""
        from fsnap import gc
        from fsnap.mount.records import snapshots_in_use
        from fsnap.run.session import reap

        if not dry_run:
            reap(self)  # runs whose fsnap died: their mounts and snapshots go first
        stores = gc.Stores(
            self.content,
            self.images,
            self.snapshots,
            self.db,
            mounted=lambda: snapshots_in_use(self.root),
        )
        return gc.collect(stores, dry_run=dry_run)

    def mount_stores(self) -> MountStores:
        from fsnap.mount.stores import MountStores

        return MountStores(self.root, self.snapshots, self.writable_mounts, self.content, self.db)

    def _has_image(self, ref: str) -> bool:
        from fsnap.errors import NotFound
        from fsnap.mount.source import image_snapshot

        try:
            image_snapshot(self.content, self.images, ref)
        except NotFound:
            return False
        return True

    def _image_top(
        self,
        ref: str,
        pull: bool,
        lazy: bool = False,
        access: RegistryAccess | None = None,
        lazy_started: Callable[[Descriptor], None] | None = None,
        progress: PullProgress | None = None,
    ) -> str:
        """The top snapshot of image ``ref``, pulling it first (``lazy``: seekable layers
        from their TOC alone; ``access``: the registry options; ``lazy_started`` and
        ``progress``: as for ``pull``) if it is missing and ``pull`` says so."""
        from fsnap.errors import NotFound
        from fsnap.mount.source import image_snapshot

        try:
            return image_snapshot(self.content, self.images, ref)
        except NotFound:
            if not pull:
                raise
        if access is None:
            self.pull(ref, lazy=lazy, lazy_started=lazy_started, progress=progress)
        else:
            self.pull(
                ref,
                lazy=lazy,
                lazy_started=lazy_started,
                progress=progress,
                plain_http=access.plain_http,
                credentials=access.credentials(),
                ca_file=access.ca_path(),
            )
        return image_snapshot(self.content, self.images, ref)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
