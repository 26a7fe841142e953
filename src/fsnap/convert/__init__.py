"""``fsnap convert``: rewrite an image's layers as seekable ones for lazy pulling.

eStargz (``fsnap.convert.estargz``) and zstd:chunked (``fsnap.convert.zstdchunked``) keep
each file's data in its own compressed pieces and add a table of contents (TOC) that says
where every file and chunk is, so a lazy puller fetches the TOC and then only the ranges it
reads. Both stay valid gzip / zstd tars: any runtime pulls and runs them in full.
``fsnap.convert.source`` orders a layer's members (prefetched files first, landmarks),
``fsnap.convert.framing`` writes them in independently decompressible pieces and records
where, ``fsnap.convert.image`` makes the new image in the store.
"""
