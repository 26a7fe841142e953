"""Applying one compressed layer blob (``fsnap.unpack.blob``) without a registry: the
diff_id check on the bytes actually unpacked, and the size limit a blob may unpack to
(written for the ``unpack.blob`` mutation target, docs/mutation.md)."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
from pathlib import Path

import pytest
from support.tar import TarBuilder

from fsnap.errors import DigestMismatch, InvalidArgument
from fsnap.oci import Descriptor
from fsnap.unpack.blob import SizeLimit, apply_blob

# No mount, no registry: these tests take a second, so a minute means a hang.
pytestmark = pytest.mark.timeout(60)

GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def layer(size: int) -> tuple[bytes, str]:
    """A gzip layer blob with one file of ``size`` bytes, and its diff_id."""
    tar = TarBuilder().dir("d").file("d/f", b"x" * size).data()
    return gzip.compress(tar), "sha256:" + hashlib.sha256(tar).hexdigest()


def desc_of(blob: bytes) -> Descriptor:
    return Descriptor(GZIP_LAYER, "sha256:" + hashlib.sha256(blob).hexdigest(), len(blob))


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    s = tmp_path / "staging"
    s.mkdir()
    return s


def test_a_blob_matching_its_diff_id_applies(staging: Path) -> None:
    blob, diff_id = layer(100)
    result = apply_blob(io.BytesIO(blob), desc_of(blob), staging, diff_id, sync=False)
    assert result.diff_id == diff_id
    assert (staging / "d/f").read_bytes() == b"x" * 100


def test_a_blob_not_matching_its_diff_id_is_refused_naming_both(staging: Path) -> None:
    blob, diff_id = layer(100)
    liar = "sha256:" + "0" * 64
    desc = desc_of(blob)
    with pytest.raises(DigestMismatch) as caught:
        apply_blob(io.BytesIO(blob), desc, staging, liar, sync=False)
    assert desc.digest in str(caught.value)
    assert diff_id in str(caught.value)
    assert liar in str(caught.value)


def test_no_limit_applies_any_size(staging: Path) -> None:
    blob, diff_id = layer(1 << 20)  # compresses to ~1 KiB: far past any ratio of it
    apply_blob(io.BytesIO(blob), desc_of(blob), staging, diff_id, sync=False, limit=None)
    assert (staging / "d/f").stat().st_size == 1 << 20


@pytest.mark.parametrize(("size", "refused"), [(4096, False), (4097, True)])
def test_an_absolute_limit_caps_the_layer_at_its_boundary(
    staging: Path, size: int, refused: bool
) -> None:
    blob, diff_id = layer(size)
    limit = SizeLimit(absolute=4096)

    def run() -> None:
        apply_blob(io.BytesIO(blob), desc_of(blob), staging, diff_id, sync=False, limit=limit)

    if refused:
        with pytest.raises(InvalidArgument, match="declare over 4096 bytes"):
            run()
    else:
        run()
        assert (staging / "d/f").stat().st_size == size


def test_the_ratio_limit_follows_the_compressed_size(staging: Path) -> None:
    """Ratio times the blob's size, above the floor: a highly compressible layer over it
    is refused (a decompression bomb), the same layer under a higher ratio applies."""
    blob, diff_id = layer(1 << 20)
    desc = desc_of(blob)
    with pytest.raises(InvalidArgument, match=f"declare over {2 * desc.size} bytes"):
        apply_blob(
            io.BytesIO(blob), desc, staging, diff_id, sync=False, limit=SizeLimit(2, floor=1)
        )


@pytest.mark.parametrize(
    ("limit", "compressed", "expected"),
    [
        (SizeLimit(ratio=3, floor=10), 5, 15),  # the ratio, above the floor
        (SizeLimit(ratio=3, floor=10), 3, 10),  # the floor
        (SizeLimit(ratio=2.5, floor=0), 3, 7),  # rounded down
        (SizeLimit(ratio=3, floor=10, absolute=7), 100, 7),  # a fixed cap wins
        (SizeLimit(ratio=3, floor=10, absolute=0), 100, 0),  # even a cap of 0
    ],
)
def test_size_limit_for_a_blob(limit: SizeLimit, compressed: int, expected: int) -> None:
    assert limit.for_blob(compressed) == expected


def test_size_limit_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        SizeLimit().absolute = 1  # type: ignore[misc]
