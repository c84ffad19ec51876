"""The teacher cache is best effort: misses on damage, bounded on disk, never fails a job."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from plada.server.pipeline.teacher_cache import TeacherCache, teacher_key
from plada.shared.schemas import TeacherOptions


def _arrays(n: int) -> dict[str, np.ndarray]:
    return {"logits": np.arange(n * 4, dtype=np.float32).reshape(n, 4)}


def test_key_covers_everything_the_teacher_depends_on() -> None:
    x, y = np.zeros((4, 8, 8), np.uint8), np.arange(4) % 2
    base = teacher_key(x, y, TeacherOptions(), "pool", "model", 2)
    assert base == teacher_key(x.copy(), y.copy(), TeacherOptions(), "pool", "model", 2)
    x2 = x.copy()
    x2[0, 0, 0] = 1
    variants = [
        teacher_key(x2, y, TeacherOptions(), "pool", "model", 2),
        teacher_key(x, y[::-1].copy(), TeacherOptions(), "pool", "model", 2),
        teacher_key(x, y, TeacherOptions(seed=1), "pool", "model", 2),
        teacher_key(x, y, TeacherOptions(), "other-pool", "model", 2),
        teacher_key(x, y, TeacherOptions(), "pool", "other-index", 2),
        teacher_key(x.reshape(4, 64, 1), y, TeacherOptions(), "pool", "model", 2),
    ]
    assert base not in variants and len(set(variants)) == len(variants)


def test_round_trip_damage_and_eviction(tmp_path: Path) -> None:
    cache = TeacherCache(tmp_path, max_bytes=30_000)
    cache.put("a", {"arch": "probe"}, _arrays(1000))  # ~16 KB
    meta, arrays = cache.get("a")  # type: ignore[misc]
    assert meta == {"arch": "probe"} and np.array_equal(arrays["logits"], _arrays(1000)["logits"])
    cache.put("b", {}, _arrays(1000))  # over budget: the least recently used entry goes
    assert cache.get("a") is None and cache.get("b") is not None
    (tmp_path / "b" / "arrays.npz").write_bytes(b"PK\x03\x04 torn")
    assert cache.get("b") is None
    assert TeacherCache(tmp_path / "off", max_bytes=0).put("c", {}, _arrays(2)) is None
    assert not (tmp_path / "off").exists()


def test_racing_writers_of_one_key_never_raise(tmp_path: Path) -> None:
    cache = TeacherCache(tmp_path)
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for _ in range(20):
                cache.put("same", {"x": 1}, _arrays(200))
                cache.get("same")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and cache.get("same") is not None
