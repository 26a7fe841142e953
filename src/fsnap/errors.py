"""Typed errors shared by every fsnap package.

Library code raises these; the CLI maps them once, in ``fsnap.cli``, to a message and an
exit code. Nothing else in fsnap decides how an error looks to a user.
"""

from __future__ import annotations

import errno


class FsnapError(Exception):
    """Base of every error fsnap reports to a user."""

    exit_code: int = 1
    # The user has read the message already (runc prints its own failure on the stderr a
    # run shares with it): the CLI only exits with ``exit_code``, saying it no second time.
    shown: bool = False


class NotFound(FsnapError):
    """A reference, blob, image, snapshot or path does not exist."""

    exit_code = 2


class AlreadyExists(FsnapError):
    """Something with that name or digest exists already."""

    exit_code = 3


class InvalidArgument(FsnapError):
    """The caller passed something malformed (a bad reference, a bad option)."""

    exit_code = 4


class FailedPrecondition(FsnapError):
    """The request is well formed but the current state forbids it (e.g. a snapshot in use)."""

    exit_code = 5


class DigestMismatch(FsnapError):
    """Bytes did not hash to the digest (or size) that named them."""

    exit_code = 6


class Unauthorized(FsnapError):
    """A registry refused our credentials, or demanded some and we had none."""

    exit_code = 7


class RegistryError(FsnapError):
    """A registry answered with an error we cannot recover from (its message is kept)."""

    exit_code = 8


class Unsupported(FsnapError):
    """A format fsnap refuses on purpose (e.g. Docker schema1 manifests)."""

    exit_code = 9


class Unavailable(FsnapError):
    """A transient condition that outlived our retries (network, 5xx, 429)."""

    exit_code = 10


class Busy(FsnapError):
    """A resource is in use (a mounted image, a busy mount point)."""

    exit_code = 11


class EnvironmentProblem(FsnapError):
    """The machine lacks something fsnap needs. The message names the cause and the fix;
    each subclass has its own exit code so scripts can tell them apart (README lists them).
    ``fsnap.info`` holds the probes that raise these."""

    exit_code = 12


class FuseUnavailable(EnvironmentProblem):
    """/dev/fuse is missing or cannot be opened by this user."""

    exit_code = 12


class ToolMissing(EnvironmentProblem):
    """A program fsnap runs (fusermount3, unshare, runc ...) is not installed."""

    exit_code = 13


class UserNamespacesDisabled(EnvironmentProblem):
    """This user cannot create user namespaces (a sysctl, or a limit of 0, forbids it)."""

    exit_code = 14


class NoSpace(EnvironmentProblem):
    """The file system holding the fsnap root is full (ENOSPC or EDQUOT)."""

    exit_code = 15


class RuntimeFailed(FsnapError):
    """The OCI runtime (runc) could not start a container; exit status as ``docker run``'s."""

    exit_code = 125


class CannotExecute(FsnapError):
    """A container's command exists but cannot be executed (permission, format)."""

    exit_code = 126


class CommandNotFound(FsnapError):
    """A container's command is not in its image: the status shells use."""

    exit_code = 127


# errnos that say the data cannot be laid out as asked (the input's fault): exit 4.
_INVALID_ERRNOS = frozenset(
    {
        errno.ENAMETOOLONG,
        errno.ELOOP,
        errno.EINVAL,
        errno.EEXIST,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.EMLINK,
        errno.ENOTEMPTY,
        errno.EOVERFLOW,
        errno.ERANGE,
        errno.E2BIG,
    }
)


def is_no_space(exc: OSError) -> bool:
    """Disk or quota full: left as an ``OSError`` for the CLI, which names the store."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def os_error(exc: OSError, what: str) -> FsnapError:
    """A typed one-line error for ``exc`` met while doing ``what`` (naming the path): an
    errno that says the input cannot be laid out -> ``InvalidArgument`` (exit 4), anything
    else -> ``FailedPrecondition`` (exit 5). Not for no-space errors (``is_no_space``)."""
    reason = exc.strerror or str(exc)
    if exc.errno in _INVALID_ERRNOS:
        return InvalidArgument(f"{what}: {reason}")
    return FailedPrecondition(f"{what}: {reason}")


def first_fsnap_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error a user should see from a failed nursery: a ``KeyboardInterrupt`` (Ctrl-C
    also fails whatever it interrupted: those errors are its echo), else its first typed
    fsnap error, else its first ``OSError`` (the CLI prints it in one line; disk full
    becomes its "no space left on <store>"), else the group itself (a bug: exit 70)."""
    return (
        _first_of_type(group, KeyboardInterrupt)
        or _first_of_type(group, FsnapError)
        or _first_of_type(group, OSError)
        or group
    )


def _first_of_type(
    group: BaseExceptionGroup[BaseException], kind: type[BaseException]
) -> BaseException | None:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            inner = _first_of_type(exc, kind)
            if inner is not None:
                return inner
        elif isinstance(exc, kind):
            return exc
    return None
