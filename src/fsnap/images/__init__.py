"""Images: the name -> target records (``store``) and the manifest formats they point at
(``manifest``)."""

from fsnap.images.manifest import ImageConfig, Index, Manifest
from fsnap.images.store import Image, ImageStore

__all__ = ["Image", "ImageConfig", "ImageStore", "Index", "Manifest"]
