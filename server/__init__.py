"""plada server: FastAPI app, SQLite-backed job queue and the worker pipeline."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("plada")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"
