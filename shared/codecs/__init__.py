"""Payload body codecs: ``paper-v1`` (the paper's fixed-width indices + zstd, readable by format-1 clients),
``entropy-v1`` and ``entropy-v2`` (range-coded index gaps and labels, plada's). ``shared/payload.py`` frames
them and picks the smallest.
"""
