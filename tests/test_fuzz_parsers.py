"""Property tests (hypothesis) over every parser of untrusted input: tar headers applied by
the real applier into a temporary directory (PAX and GNU extensions included), manifests,
indexes, configs, references and docker's config.json.

The property: a parser either succeeds or raises a typed ``FsnapError``; nothing else
(no ``KeyError``, ``OverflowError``, ``RecursionError`` ... that the CLI would turn into an
internal error, exit 70). Runs are bounded (``max_examples``, ``deadline``) so the suite
stays fast; crashes found are kept below as explicit regression tests.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fsnap import oci
from fsnap.archive.apply import apply_layer
from fsnap.errors import FsnapError
from fsnap.fdtree import remove_tree
from fsnap.images.manifest import load_document, parse_config, parse_index, parse_manifest
from fsnap.oci import Descriptor
from fsnap.reference import Reference
from fsnap.remotes.dockerconfig import lookup

# FSNAP_FUZZ_EXAMPLES=2000 for a longer hunt; the suite's default keeps it to seconds.
BOUNDED = settings(
    max_examples=int(os.environ.get("FSNAP_FUZZ_EXAMPLES", "60")),
    deadline=2000,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# JSON nested deeper than the json module's recursion allows: a crash fuzzing found.
DEEP_JSON = "[" * 100_000 + "]" * 100_000
DOC = Descriptor(oci.OCI_MANIFEST, "sha256:" + "0" * 64, 10)

# -- tar headers through the real applier -----------------------------------------------------

_NAME_PARTS = st.sampled_from(["a", "b", "..", ".", "", ".wh.a", ".wh..wh..opq", "é", "x" * 120])
NAMES = st.lists(_NAME_PARTS, min_size=1, max_size=6).map("/".join) | st.text(max_size=40)
NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(["", "1e30", "-0.5", "nan", "inf", "0x10", "١٢"]),
)
PAX_KEYS = st.sampled_from(
    [
        "mtime",
        "atime",
        "uid",
        "gid",
        "size",
        "path",
        "linkpath",
        "uname",
        "GNU.sparse.major",
        "GNU.sparse.minor",
        "GNU.sparse.realsize",
        "GNU.sparse.size",
        "GNU.sparse.map",
        "GNU.sparse.name",
        "SCHILY.xattr.user.a",
        "LIBARCHIVE.xattr.user.b",
        "SCHILY.xattr.security.capability",
    ]
)
TYPES = st.sampled_from(
    [
        tarfile.REGTYPE,
        tarfile.DIRTYPE,
        tarfile.SYMTYPE,
        tarfile.LNKTYPE,
        tarfile.CHRTYPE,
        tarfile.BLKTYPE,
        tarfile.FIFOTYPE,
        tarfile.GNUTYPE_SPARSE,
        b"x",
        b"Z",
    ]
)


@st.composite
def members(draw: st.DrawFn) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(draw(NAMES))
    info.type = draw(TYPES)
    info.mode = draw(st.integers(min_value=0, max_value=0o7777))
    info.uid = draw(st.integers(min_value=0, max_value=2**21 - 1))
    info.gid = draw(st.integers(min_value=0, max_value=2**21 - 1))
    info.mtime = draw(st.integers(min_value=0, max_value=2**33 - 1))
    info.linkname = draw(NAMES) if info.type in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
    info.devmajor = draw(st.integers(min_value=0, max_value=4095))
    info.devminor = draw(st.integers(min_value=0, max_value=4095))
    info.pax_headers = draw(st.dictionaries(PAX_KEYS, NUMBERS | NAMES, max_size=3))
    data = draw(st.binary(max_size=64)) if info.type == tarfile.REGTYPE else None
    info.size = len(data) if data is not None else 0
    return info, data


def _tar_of(items: list[tuple[tarfile.TarInfo, bytes | None]], fmt: int) -> bytes | None:
    """The tar ``tarfile`` writes for ``items``, or None when it refuses to write them."""
    out = io.BytesIO()
    try:
        with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
            for info, data in items:
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
    except (ValueError, OverflowError, UnicodeError, tarfile.TarError):
        return None
    return out.getvalue()


def apply_must_be_typed(data: bytes) -> None:
    """Apply ``data`` into a fresh directory: success or a typed error, nothing else."""
    top = Path(tempfile.mkdtemp(prefix="fsnap-fuzz-"))
    try:
        (top / "fs").mkdir()
        with contextlib.suppress(FsnapError):
            apply_layer(io.BytesIO(data), top / "fs", sync=False, max_size=1 << 20)
    finally:
        remove_tree(top)


@BOUNDED
@given(
    st.lists(members(), min_size=1, max_size=5),
    st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT]),
)
def test_generated_tars_apply_or_fail_typed(
    items: list[tuple[tarfile.TarInfo, bytes | None]], fmt: int
) -> None:
    data = _tar_of(items, fmt)
    if data is not None:
        apply_must_be_typed(data)


def _seed_tar() -> bytes:
    items = []
    for name, kind in (("etc", tarfile.DIRTYPE), ("etc/motd", tarfile.REGTYPE)):
        info = tarfile.TarInfo(name)
        info.type = kind
        info.pax_headers = {"mtime": "1700000000.5", "SCHILY.xattr.user.k": "v"}
        items.append((info, b"" if kind == tarfile.REGTYPE else None))
    link = tarfile.TarInfo("etc/link")
    link.type, link.linkname = tarfile.SYMTYPE, "motd"
    items.append((link, None))
    data = _tar_of(items, tarfile.PAX_FORMAT)
    assert data is not None
    return data


SEED = _seed_tar()


@BOUNDED
@given(st.lists(st.tuples(st.integers(0, len(SEED) - 1), st.integers(0, 255)), max_size=8))
def test_mutated_tar_headers_apply_or_fail_typed(flips: list[tuple[int, int]]) -> None:
    data = bytearray(SEED)
    for offset, value in flips:
        data[offset] = value
    apply_must_be_typed(bytes(data))


# -- documents -----------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
DESCRIPTOR_LIKE = st.fixed_dictionaries(
    {},
    optional={
        "mediaType": st.sampled_from([*sorted(oci.LAYER_TYPES), oci.OCI_MANIFEST, "x"]) | JSON,
        "digest": st.sampled_from(["sha256:" + "a" * 64, "sha256:zz", "md5:1", ""]) | JSON,
        "size": st.integers(min_value=-(2**70), max_value=2**70) | JSON,
        "platform": st.fixed_dictionaries(
            {}, optional={"os": JSON, "architecture": JSON, "variant": JSON}
        )
        | JSON,
        "annotations": JSON,
        "urls": JSON,
    },
)
DOCUMENTS = st.fixed_dictionaries(
    {},
    optional={
        "schemaVersion": st.sampled_from([1, 2, "2"]) | JSON,
        "mediaType": st.sampled_from([oci.OCI_INDEX, oci.OCI_MANIFEST, oci.DOCKER_MANIFEST, "x"])
        | JSON,
        "manifests": st.lists(DESCRIPTOR_LIKE, max_size=3) | JSON,
        "config": DESCRIPTOR_LIKE | JSON,
        "layers": st.lists(DESCRIPTOR_LIKE, max_size=3) | JSON,
        "rootfs": st.fixed_dictionaries({}, optional={"diff_ids": st.lists(JSON, max_size=3)})
        | JSON,
        "architecture": JSON,
        "os": JSON,
    },
)


def _parse_all(raw: bytes) -> None:
    for parse in (_as_manifest, _as_index, _as_config):
        with contextlib.suppress(FsnapError):
            parse(raw)


def _as_manifest(raw: bytes) -> None:
    parse_manifest(DOC, load_document(DOC, raw))


def _as_index(raw: bytes) -> None:
    parse_index(DOC, load_document(DOC, raw))


def _as_config(raw: bytes) -> None:
    parse_config(DOC, raw)


_DIGEST = "sha256:" + "a" * 64


@BOUNDED
@given(DOCUMENTS)
# found by this test: annotations/urls of the wrong JSON type crashed (TypeError, exit 70)
@example({"manifests": [{"digest": _DIGEST, "size": 0, "annotations": True}]})
@example({"manifests": [{"digest": _DIGEST, "size": 0, "annotations": "0"}]})
@example({"manifests": [{"digest": _DIGEST, "size": 0, "urls": True}]})
def test_manifests_indexes_configs_parse_or_fail_typed(doc: dict[str, Any]) -> None:
    _parse_all(json.dumps(doc).encode())


@BOUNDED
@given(st.binary(max_size=200) | JSON.map(lambda v: json.dumps(v).encode()))
@example(b"\xff\xfe{}")
@example(DEEP_JSON.encode())  # crashed load_document with RecursionError (exit 70)
def test_arbitrary_bytes_as_documents_fail_typed(raw: bytes) -> None:
    _parse_all(raw)


# -- references and docker config.json ----------------------------------------------------

REFERENCE_CHARS = st.sampled_from([*"abcAZ09._-/:@+ ", "sha256:", "a" * 64, "é", "\0"])


@BOUNDED
@given(st.text(max_size=80) | st.lists(REFERENCE_CHARS, max_size=20).map("".join))
@example("a" * 300 + ":tag")
@example("localhost:99999999999999999999/x")
def test_references_parse_or_fail_typed(text: str) -> None:
    with contextlib.suppress(FsnapError):
        str(Reference.parse(text))


@BOUNDED
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "auths": st.dictionaries(
                st.sampled_from(["reg.example", "https://reg.example/v1/", "x"])
                | st.text(max_size=8),
                st.fixed_dictionaries(
                    {},
                    optional={
                        "auth": st.sampled_from(["dXNlcjpwYXNz", "!!", "", "dXNlcg=="]) | JSON,
                        "username": JSON,
                        "password": JSON,
                        "identitytoken": JSON,
                    },
                )
                | JSON,
                max_size=3,
            )
            | JSON,
            "credsStore": JSON,
            "credHelpers": JSON,
        },
    )
    | JSON
)
@example(DEEP_JSON)
@example({"auths": {"reg.example": {"auth": "\x80"}}})  # non-ASCII base64: was ValueError
def test_docker_config_parses_or_fails_typed(config: Any) -> None:
    fd, name = tempfile.mkstemp(prefix="fsnap-fuzz-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(config if config is DEEP_JSON else json.dumps(config))
        with contextlib.suppress(FsnapError):
            lookup(Path(name), "reg.example")
    finally:
        os.unlink(name)
