"""The Debian mirror this machine already uses, read from its apt sources at run time.

No mirror host name is ever written into the repository: a benchmark must use whatever
this machine is allowed to reach.
"""

from __future__ import annotations

import re
from pathlib import Path

SOURCES = Path("/etc/apt/sources.list")
SOURCES_DIR = Path("/etc/apt/sources.list.d")


def debian_mirror() -> str | None:
    """The first enabled ``.../debian`` URI that carries bookworm's main suite, or None."""
    for path in _source_files():
        text = path.read_text(errors="replace")
        uri = _from_deb822(text) if path.suffix == ".sources" else _from_one_line(text)
        if uri:
            return uri
    return None


def _source_files() -> list[Path]:
    files = [SOURCES] if SOURCES.is_file() else []
    if SOURCES_DIR.is_dir():
        files += sorted(p for p in SOURCES_DIR.iterdir() if p.suffix in (".list", ".sources"))
    return files


def _from_one_line(text: str) -> str | None:
    """``deb [opts] URI SUITE COMPONENTS`` lines."""
    for line in text.splitlines():
        fields = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
        if len(fields) >= 3 and fields[0] == "deb" and fields[2] == "bookworm":
            return fields[1]
    return None


def _from_deb822(text: str) -> str | None:
    """deb822 stanzas: ``Types: deb``, ``URIs: ...``, ``Suites: bookworm ...``."""
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        if (
            "deb" in fields.get("types", "").split()
            and "bookworm" in fields.get("suites", "").split()
        ):
            uris = fields.get("uris", "").split()
            if uris:
                return uris[0]
    return None
