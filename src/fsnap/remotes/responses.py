"""Reading registry responses: media types, JSON error bodies, size-capped bodies.

Registries explain failures in a JSON body (``{"errors": [{"code", "message"}]}``); keeping
that message is the difference between "HTTP 400" and "manifest invalid: ...".
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from fsnap import oci
from fsnap.errors import InvalidArgument, Unsupported

# Error bodies are read only this far: enough for any message, bounded against abuse.
ERROR_BODY_LIMIT = 64 * 1024

# Media types a registry may legitimately answer a manifest request with.
KNOWN_MANIFEST_TYPES = oci.INDEX_TYPES | oci.MANIFEST_TYPES | oci.SCHEMA1_TYPES


def media_type_of(content_type: str) -> str:
    """The bare media type of a Content-Type header (parameters such as charset dropped)."""
    return content_type.split(";", 1)[0].strip().lower()


async def read_capped(response: httpx.Response, limit: int) -> bytes | None:
    """The whole body, or None as soon as it exceeds ``limit`` bytes; the response is closed."""
    chunks: list[bytes] = []
    total = 0
    try:
        async for chunk in response.aiter_bytes():
            total += len(chunk)
            if total > limit:
                return None
            chunks.append(chunk)
    finally:
        await response.aclose()
    return b"".join(chunks)


def error_message(body: bytes | None) -> str:
    """The registry's own explanation in an error body: ``CODE: message`` items, or its text."""
    if not body:
        return ""
    try:
        data: Any = json.loads(body)
    except (ValueError, RecursionError):
        text = body.decode("utf-8", "replace").strip()
        return text[:200]
    errors = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errors, list):
        return ""
    parts = []
    for item in errors:
        if isinstance(item, dict):
            code, message = item.get("code", ""), item.get("message", "")
            parts.append(f"{code}: {message}" if code and message else str(code or message))
    return "; ".join(p for p in parts if p)


def parse_manifest_json(body: bytes, what: str) -> dict[str, Any]:
    """``body`` as a JSON object, else InvalidArgument: a manifest that is not JSON is useless."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InvalidArgument(f"{what}: manifest is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"{what}: manifest is not a JSON object")
    return data


def sniff_media_type(content_type: str, body: bytes, what: str) -> str:
    """The manifest's media type: the header if it is one we know, else the body's ``mediaType``.

    Some registries answer ``application/json``; the manifest itself then says what it is,
    and a ``schemaVersion`` of 1 marks the obsolete schema 1.
    """
    data = parse_manifest_json(body, what)
    if content_type in KNOWN_MANIFEST_TYPES:
        return content_type
    declared = data.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    if data.get("schemaVersion") == 1:
        return oci.DOCKER_SCHEMA1
    if "manifests" in data:
        return oci.OCI_INDEX
    if "layers" in data and "config" in data:
        return oci.OCI_MANIFEST
    return content_type


def check_manifest_type(what: str, media_type: str) -> None:
    """Refuse schema 1 by name, and anything that is not a manifest or index."""
    if media_type in oci.SCHEMA1_TYPES:
        raise Unsupported(
            f"{what}: manifest media type {media_type} (Docker schema 1) is not supported; "
            "rebuild or re-push the image with a current tool"
        )
    if media_type not in oci.INDEX_TYPES | oci.MANIFEST_TYPES:
        raise Unsupported(f"{what}: unsupported manifest media type {media_type!r}")
