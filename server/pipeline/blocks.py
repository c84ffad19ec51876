"""Pool-sized arrays read in blocks, with the resident memory of a pass bounded by its block, not the pool.

A 14.2M-item pool's feature index (3.6 GB at 256 int8 dimensions) and its teacher logits (2.8 GB at 100
classes, float16) are memory maps. Reading a map block by block leaves every page it touched mapped into the
process: the page cache keeps them anyway, but they count in the process's RSS and a pass over the pool ends
with the whole file "resident". So each block is copied out (as float32, what the arithmetic wants) and its
pages are handed back with ``madvise(MADV_DONTNEED)``: the file stays in the page cache for the next pass, the
process holds one block. Plain in-memory arrays go through the same functions untouched.

``BLOCK_BYTES`` is the float32 size of one block; ``RunConfig.block_bytes`` sets it for a run. A
``Streaming`` value (``RunConfig.streaming()``) carries it, and where blocks are computed: here, or as Ray
tasks (``executor="ray"``) that each map the index file themselves — the same function on the same rows, so
the results are the local ones, block for block.
"""

from __future__ import annotations

import functools
import mmap
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

BLOCK_BYTES = 64 << 20  # one block of float32 rows; the default of RunConfig.block_bytes


def block_rows(arr: np.ndarray, block_bytes: int = BLOCK_BYTES, *, at_least: int = 1024) -> int:
    """Rows per block so that one float32 copy of a block is about ``block_bytes``."""
    row = int(np.prod(arr.shape[1:], dtype=np.int64)) * 4 if arr.ndim > 1 else 4
    return max(at_least, block_bytes // max(row, 1))


def _mapping(arr: np.ndarray) -> mmap.mmap | None:
    base: Any = arr
    while base is not None and not isinstance(base, mmap.mmap):
        base = base.obj if isinstance(base, memoryview) else getattr(base, "base", None)
    return base


def is_mapped(arr: np.ndarray) -> bool:
    """Whether ``arr`` lives in a memory map (a file, or an unlinked spill) rather than in RAM."""
    return _mapping(arr) is not None


def release(arr: np.ndarray) -> None:
    """Hand the pages of ``arr`` (a view into a memory map) back to the page cache; a no-op for RAM arrays.
    Safe on shared maps: dirty pages of a writable map are kept by the file, not dropped."""
    mm = _mapping(arr)
    if mm is None or arr.size == 0 or mm.closed:
        return
    start = np.frombuffer(mm, dtype=np.uint8).ctypes.data
    lo = arr.__array_interface__["data"][0] - start
    hi = lo + arr.nbytes if arr.flags.c_contiguous else len(mm)
    lo = max(0, lo - lo % mmap.PAGESIZE)
    hi = min(len(mm), hi)
    if hi > lo:
        mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


def rows(arr: np.ndarray, start: int, stop: int, dtype: Any = np.float32) -> np.ndarray:
    """A copy of rows ``start:stop`` as ``dtype``; the map's pages for them are released."""
    view = arr[start:stop]
    out = np.array(view, dtype=dtype)
    release(view)
    return out


def iter_rows(
    arr: np.ndarray, block_bytes: int = BLOCK_BYTES, dtype: Any = np.float32
) -> Iterator[tuple[int, np.ndarray]]:
    """(start, block) over ``arr`` in order, each block a fresh copy (see ``rows``)."""
    step = block_rows(arr, block_bytes)
    for s in range(0, len(arr), step):
        yield s, rows(arr, s, min(len(arr), s + step), dtype)


SPARSE_GAP = 64 << 10  # bytes of file between gathered rows above which read-around is turned off


def take(arr: np.ndarray, idx: np.ndarray, dtype: Any = np.float32) -> np.ndarray:
    """Rows ``idx`` (any order) as ``dtype``: gathered in sorted order, 1,024 at a time, each run's pages handed
    back at once. (The kernel maps up to 16 neighbouring cached pages at every fault: a sample of 20,000
    scattered rows would otherwise leave most of a 500 MB index resident until the end.) A sparse gather from
    a map turns the kernel's read-around off for its duration: each fault on a file not in the page cache
    otherwise reads ~128 KiB around a 2.5 KiB row (24,000 rows of a 36 GB index on disk: 27.6 s, without
    read-around 1.5 s)."""
    idx = np.asarray(idx, dtype=np.int64)
    order = np.argsort(idx, kind="stable")
    out = np.empty((len(idx), *arr.shape[1:]), dtype=dtype)
    mm = _mapping(arr)
    step = 1024 if mm is not None else max(1, len(idx))
    sparse = mm if mm is not None and len(idx) > 0 and arr.nbytes / len(idx) > SPARSE_GAP else None
    if sparse is not None:
        sparse.madvise(mmap.MADV_RANDOM)
    try:
        for s in range(0, len(idx), step):
            part = order[s : s + step]
            rows_ = idx[part]
            out[part] = arr[rows_]
            if mm is not None and len(rows_):
                release(arr[int(rows_.min()) : int(rows_.max()) + 1])
    finally:
        if sparse is not None and not sparse.closed:
            sparse.madvise(mmap.MADV_NORMAL)
    return out


def iter_take(
    arr: np.ndarray, idx: np.ndarray, block_bytes: int = BLOCK_BYTES, dtype: Any = np.float32
) -> Iterator[tuple[int, np.ndarray]]:
    """(start, rows ``idx[start:start + step]``) a block at a time (see ``take``): a gather of any size holds one
    block, as a pass does. Give ``idx`` sorted to read the file in order."""
    idx = np.asarray(idx, dtype=np.int64)
    step = block_rows(arr, block_bytes)
    for s in range(0, len(idx), step):
        yield s, take(arr, idx[s : s + step], dtype)


def spill(shape: tuple[int, ...], dtype: Any, scratch_dir: str | os.PathLike[str] | None = None) -> np.ndarray:
    """A writable array on disk, unlinked at once: the mapping lives as long as the array, and a crash leaves no
    file behind. In ``scratch_dir`` (None: the system temp folder)."""
    nbytes = max(1, int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
    fd, path = tempfile.mkstemp(prefix="plada-spill-", suffix=".bin", dir=scratch_dir)
    try:
        os.unlink(path)
        os.ftruncate(fd, nbytes)
        mm = mmap.mmap(fd, nbytes)
    finally:
        os.close(fd)
    return np.frombuffer(mm, dtype=dtype, count=int(np.prod(shape, dtype=np.int64))).reshape(shape)


def logits_array(n: int, k: int, ram_bytes: int, scratch_dir: str | os.PathLike[str] | None = None) -> np.ndarray:
    """An (n, k) array for pool logits: float32 in RAM up to ``ram_bytes``, past it a float16 ``spill`` (ImageNet-21K
    × 100 classes would need 5.7 GB as float32). One rule for every path that scores the pool."""
    if n * k * 4 > ram_bytes:
        return spill((n, k), np.float16, scratch_dir)
    return np.empty((n, k), np.float32)


def _file_rows(path: str, start: int, stop: int, fn: Callable[[int, np.ndarray], Any]) -> Any:
    """One block on a Ray worker: map the file there, copy the rows out, run ``fn``."""
    arr = np.load(path, mmap_mode="r", allow_pickle=False)
    return fn(start, rows(arr, start, stop))


@dataclass(frozen=True)
class Streaming:
    """How a pool-wide pass runs: blocks of ``block_bytes`` (as float32), here or on Ray."""

    block_bytes: int = BLOCK_BYTES
    executor: str = "local"  # "ray": blocks of a file-backed array run as Ray tasks
    ray_address: str = ""

    def map(self, arr: np.ndarray, fn: Callable[[int, np.ndarray], Any]) -> Iterator[tuple[int, Any]]:
        """(start, fn(start, block)) for every block of ``arr`` in order. On Ray only when ``arr`` is a
        memory-mapped ``.npy`` (workers open it by path; an index is one); arrays in RAM stream here."""
        path = getattr(arr, "filename", None)
        if self.executor != "ray" or not path or not str(path).endswith(".npy"):
            for s, block in iter_rows(arr, self.block_bytes):
                yield s, fn(s, block)
            return
        import ray

        if not ray.is_initialized():
            ray.init(address=self.ray_address or None, include_dashboard=False, log_to_driver=False)
        task = ray.remote(_file_rows)
        step = block_rows(arr, self.block_bytes)
        starts = list(range(0, len(arr), step))
        window = max(2, 2 * int(ray.cluster_resources().get("CPU", 2)))
        pending: dict[int, Any] = {}
        for i, s in enumerate(starts):  # a bounded window of blocks in flight, results taken in order
            pending[s] = task.remote(str(path), s, min(len(arr), s + step), fn)
            if i + 1 >= window:
                first = starts[i + 1 - window]
                yield first, ray.get(pending.pop(first))
        for s in starts:
            if s in pending:
                yield s, ray.get(pending.pop(s))


LOCAL = Streaming()


def block_fn(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[[int, np.ndarray], Any]:
    """``fn(block, *args, **kwargs)`` as a picklable per-block function (the block's start is dropped)."""
    return functools.partial(_call_on_block, fn, args, kwargs)


def _call_on_block(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], _s: int, b: np.ndarray
) -> Any:
    return fn(b, *args, **kwargs)
