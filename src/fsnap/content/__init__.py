"""The content store: blobs addressed by digest, indexed in LMDB, ingested through writers.

``api`` states the contract, as containerd's ``content.go`` does: a ``Provider`` (committed
blobs: info, open/read, walk) and an ``Ingester`` (writers by ref, status, abort).
``store.ContentStore`` implements both over files plus LMDB; ``ingest`` owns the state of
the blobs being written (partial data, locks, status records, the crash protocol) and
``writer`` the resumable, verified ``Writer``.
"""

from fsnap.content.api import Info, Ingester, IngestStatus, Provider, Writer
from fsnap.content.store import ContentStore

__all__ = ["ContentStore", "Info", "IngestStatus", "Ingester", "Provider", "Writer"]
