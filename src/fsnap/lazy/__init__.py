"""Lazy pulling: seekable layers (eStargz, zstd:chunked) read through their table of contents.

``toc`` finds and parses a layer's table of contents (the TOC data model both formats map
to); ``chunks`` turns the compressed bytes of one chunk back into verified file contents.
"""
