"""Driving a RegistryClient from synchronous tests: run a body under trio, read blobs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio
from image_builder import Format, Image

from fsnap import oci
from fsnap.reference import Reference
from fsnap.remotes import RegistryClient
from support.registry import make_image, make_layer

FAST = {"backoff_base": 0.01, "backoff_max": 0.05}


def run(body: Callable[[RegistryClient], Awaitable[Any]], **client_args: Any) -> Any:
    """Run ``body(client)`` under trio with a fresh RegistryClient."""

    async def main() -> Any:
        async with RegistryClient(**client_args) as client:
            return await body(client)

    return trio.run(main)


async def read_blob(
    client: RegistryClient, ref: Reference, desc: oci.Descriptor, offset: int = 0
) -> bytes:
    return b"".join([chunk async for chunk in client.fetch_blob(ref, desc, offset)])


def small_image(name: str, fmt: Format = "oci") -> Image:
    layer = make_layer({"hello.txt": f"hello from {name}\n" * 2000}, "gzip", fmt)
    return make_image([layer], fmt=fmt)


def ref_at(host: str, repo: str, obj: str = "v1") -> Reference:
    sep = "@" if obj.startswith("sha256:") else ":"
    return Reference.parse(f"{host}/{repo}{sep}{obj}")
