"""The merged file system of plain overlayfs-format directories, built once at start.

Each lower directory is read into a layer index by one walk (``scan_snapshot`` in
overlay mode: 0/0 character devices and ``.wh.`` files are whiteouts, the opaque xattrs
and marker make a directory opaque). After that a request never probes a directory: the
same ``MergedTree`` that serves fsnap's snapshots serves the stack. The lower directories
must not change while mounted (overlayfs asks the same).

The root shows the attributes of the upper directory when there is one, else of the top
lower directory, as overlayfs does.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from fsnap.archive.entry import Entry
from fsnap.archive.format import OVERLAY_XATTR_PREFIXES, OverlayMarkers
from fsnap.diff.scan import scan_snapshot
from fsnap.errors import FailedPrecondition, InvalidArgument, NotFound
from fsnap.mount.fs import MergedFS, TreeFS
from fsnap.mount.rwfs import WritableFS
from fsnap.mount.tree import Layer, MergedTree
from fsnap.mount.union import Overrides, Union
from fsnap.mount.upper import Upper
from fsnap.overlay.options import OverlayOptions

# fsnap's copy-up temporaries live here, inside the work directory the user gave.
WORK_SUBDIR = "fsnap-overlay"


def root_entry(directory: Path) -> Entry:
    """The mount root's metadata, taken from ``directory`` itself."""
    st = os.stat(directory)
    xattrs: dict[str, bytes] = {}
    for name in os.listxattr(directory):
        if not name.startswith(OVERLAY_XATTR_PREFIXES):
            xattrs[name] = os.getxattr(directory, name)
    return Entry(
        path="",
        kind="dir",
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        mtime=st.st_mtime_ns,
        xattrs=xattrs,
    )


def _scan(directory: Path, name: str, upper: bool = False) -> Layer:
    if not directory.is_dir():
        raise NotFound(f"{name} {directory} is not a directory")
    return Layer(
        directory, scan_snapshot(directory, overlay=True), os.fspath(directory), upper=upper
    )


def lower_layers(lower: list[Path]) -> list[Layer]:
    """The lower directories as layers, bottom first (``lowerdir=`` lists the top first)."""
    return [_scan(d, "lowerdir") for d in reversed(lower)]


def _ignore_overrides() -> Overrides:
    """Metadata the disk cannot hold is kept for this mount only: nothing records it."""
    return Overrides(put=lambda entry: None, delete=lambda path, subtree: None)


def _work_area(work: Path, upper: Path) -> Path:
    """fsnap's corner of the work directory; it must share the upper's file system, since
    copy-ups are renamed from one into the other."""
    if not work.is_dir():
        raise NotFound(f"workdir {work} is not a directory")
    if os.stat(work).st_dev != os.stat(upper).st_dev:
        raise InvalidArgument(f"workdir {work} and upperdir {upper} must be on one file system")
    return work / WORK_SUBDIR


def build(options: OverlayOptions, read_only: bool) -> TreeFS:
    """The file system for ``options``: read-only over the lowers (and the upper, as one
    more layer, if ``read_only`` is forced), else writable into the upper directory."""
    try:
        lowers = lower_layers(options.lower)
        if options.upper is None:
            layers = lowers
        else:
            layers = [*lowers, _scan(options.upper, "upperdir", upper=not read_only)]
        layers[-1].entries.append(root_entry(Path(layers[-1].dir)))
        if read_only or options.upper is None or options.work is None:
            return MergedFS(MergedTree.build(layers))
        privileged = os.geteuid() == 0
        upper = Upper(
            options.upper,
            _work_area(options.work, options.upper),
            privileged,
            OverlayMarkers(privileged),
        )
        upper.clear_work()
        return WritableFS(Union(MergedTree.build(layers), upper, _ignore_overrides()))
    except OSError as exc:
        raise FailedPrecondition(f"reading the layer stack: {exc}") from None
