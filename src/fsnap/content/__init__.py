"""The content store: blobs addressed by digest, indexed in LMDB, ingested through writers.

``ContentStore`` holds committed blobs; ``Writer`` is how bytes become one (resumable,
verified, atomic). See ``store.py`` and ``writer.py``.
"""

from fsnap.content.store import ContentStore, Info
from fsnap.content.writer import IngestStatus, Writer

__all__ = ["ContentStore", "Info", "IngestStatus", "Writer"]
