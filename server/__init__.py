"""plada server: the HTTP API (FastAPI) and its pages, the job queue in SQLite or PostgreSQL, the workers that
run the pipeline, the blob store that keeps payloads, and the operator's CLI (``plada-server``)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("plada")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"
