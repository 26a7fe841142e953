"""Directories only the store's owner may enter: the ones on the way to layer content.

A root pull unpacks setuid-root binaries and device nodes; while they are staged (and
after a killed pull, until the next cleanup) they must not be reachable by other local
users, who could run the binary with euid 0 or open the device (containerd's
CVE-2021-41103). So every directory on the way to unpacked or staged content is mode 0700
and belongs to the store's owner (the owner of the fsnap root): ``unpack/`` and its
sessions, ``snapshots/`` and each snapshot's own ``<id>/``, ``content/ingest/``. A
snapshot's ``fs/`` keeps its layer root's mode (0755; a scan of it becomes the committed
layer's root): nobody else can reach it through the 0700 directories above.

The mount daemon serves committed snapshots to everyone through FUSE while running as the
store's owner, so nobody else ever needs to enter these directories. They are checked
every time a store is opened; a wrong mode or owner is repaired with a warning (an owner
only by root; anyone else gets the warning).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from fsnap.errors import FailedPrecondition

log = logging.getLogger(__name__)

PRIVATE_MODE = 0o700
# Under the fsnap root (each snapshot's own directory is checked by the snapshotter).
PRIVATE_DIRS = ("unpack", "snapshots", "content/ingest")


def private_dir(path: Path, store_root: Path) -> Path:
    """Make ``path`` an existing directory, mode 0700, owned by ``store_root``'s owner:
    created so if missing, repaired (with a warning) if not. Returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    owner = os.stat(store_root)
    try:
        os.mkdir(path, PRIVATE_MODE)
    except FileExistsError:
        pass
    else:
        os.chmod(path, PRIVATE_MODE)  # whatever the umask
        if os.geteuid() == 0 and owner.st_uid != 0:  # root working in a user's store
            os.chown(path, owner.st_uid, owner.st_gid)
        return path
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise FailedPrecondition(f"{path} should be a directory of the fsnap store")
    repair(path, st, owner)
    return path


def keep_private(path: Path, owner: os.stat_result) -> os.stat_result | None:
    """Repair ``path`` if it is not 0700 and ``owner``'s; nothing if it is gone (unlike
    ``private_dir``, never creates it: for directories others may remove meanwhile).
    Returns its stat from before a repair, None if none was needed."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    if stat.S_IMODE(st.st_mode) != PRIVATE_MODE or st.st_uid != owner.st_uid:
        repair(path, st, owner)
        return st
    return None


def repair(path: Path, st: os.stat_result, owner: os.stat_result) -> None:
    """Give ``path`` (its ``st`` just taken) mode 0700 and ``owner``'s uid, warning."""
    mode = stat.S_IMODE(st.st_mode)
    if mode != PRIVATE_MODE:
        os.chmod(path, PRIVATE_MODE)
        log.warning(
            "%s was mode %04o; made it 0700: layer content under it must not be reachable "
            "by other users",
            path,
            mode,
        )
    if st.st_uid == owner.st_uid:
        return
    if os.geteuid() != 0:
        log.warning(
            "%s belongs to uid %d, not to the store's owner (uid %d)",
            path,
            st.st_uid,
            owner.st_uid,
        )
        return
    os.chown(path, owner.st_uid, owner.st_gid)
    log.warning(
        "%s belonged to uid %d; gave it to the store's owner (uid %d)",
        path,
        st.st_uid,
        owner.st_uid,
    )
