"""Uploads that cannot exhaust the host: each test builds an input that would cost memory, disk or time and
checks that it is refused by the cheap check meant for it, before the expensive work."""

from __future__ import annotations

import io
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_inputs import _zip

from plada.server.db import JobRow, PoolRow, TaskRow, VersionRow, init_db, make_engine
from plada.server.publishing import sweep_finished_uploads
from plada.server.uploads import ArchiveLimits, peek_central_directory, read_target_data, store_upload
from plada.shared.errors import DecompressionBombError, InvalidDataError

SHAPE = (28, 28, 1)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_member_count_is_read_from_the_end_record_before_the_directory_is_parsed(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    data = _zip({f"a/{i}.png": b"x" for i in range(12)})
    assert peek_central_directory(data)[0] == 12

    def no_parse(*_a, **_k):  # type: ignore[no-untyped-def]
        raise AssertionError("zipfile parsed the directory before the member count was checked")

    monkeypatch.setattr(zipfile.ZipFile, "__init__", no_parse)
    with pytest.raises(DecompressionBombError, match="12 members; the limit is 5"):
        read_target_data(data, "d.zip", ["a", "b"], SHAPE, ArchiveLimits(max_members=5))


def test_a_directory_claiming_more_bytes_than_the_file_is_refused() -> None:
    data = bytearray(_zip({"a/1.png": b"x", "b/1.png": b"y"}))
    at = bytes(data).rfind(b"PK\x05\x06")
    data[at + 12 : at + 16] = (0x7FFFFFFF).to_bytes(4, "little")
    with pytest.raises(InvalidDataError, match="central directory claims"):
        read_target_data(bytes(data), "d.zip", ["a", "b"], SHAPE)


def test_total_pixels_are_bounded_before_any_image_is_decoded() -> None:
    """Three 1000x1000 images (3 MB decoded) against a 1 MB budget; the last one is truncated after its header,
    so decoding anything before the check would fail differently."""
    big = _png(Image.new("L", (1000, 1000), 7))
    members = {"a/1.png": big, "a/2.png": big, "b/1.png": big, "b/2.png": big[:100]}
    with pytest.raises(DecompressionBombError, match="decode to 4000000 bytes; the limit is 1000000"):
        read_target_data(_zip(members), "d.zip", ["a", "b"], SHAPE, ArchiveLimits(max_decoded=1_000_000))


def test_npz_arrays_are_bounded_by_their_header() -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, x=np.zeros((2000, 64, 64), np.uint8), y=np.repeat([0, 1], 1000))
    with pytest.raises(DecompressionBombError, match="decodes to 8192000 bytes"):
        read_target_data(buf.getvalue(), "d.npz", ["a", "b"], SHAPE, ArchiveLimits(max_decoded=1_000_000))


def test_only_documented_image_formats_are_decoded() -> None:
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\nshowpage\n%%EOF\n"
    good = _png(Image.new("L", (28, 28), 100))
    data = _zip({"a/1.png": good, "a/2.png": good, "b/1.eps": eps, "b/2.png": good})
    with pytest.raises(InvalidDataError, match=r"b/1.eps' is not a readable image in a supported format \(PNG"):
        read_target_data(data, "d.zip", ["a", "b"], SHAPE)


def test_16_bit_images_are_scaled_not_saturated() -> None:
    levels = {"a": 0, "b": 32768}  # 16-bit mid-grey must become ~128, not 255
    members = {}
    for cls, v in levels.items():
        img = Image.fromarray(np.full((28, 28), v, np.uint16))
        assert img.mode.startswith("I")
        members |= {f"{cls}/1.png": _png(img), f"{cls}/2.png": _png(img)}
    x, y = read_target_data(_zip(members), "d.zip", ["a", "b"], SHAPE)
    assert x[y == 0].max() == 0 and abs(int(x[y == 1].mean()) - 128) <= 1


def test_exif_orientation_is_applied() -> None:
    """A JPEG stored sideways (left half dark) with EXIF orientation 6 (rotate 90 degrees clockwise to show):
    shown upright its top half is dark."""
    arr = np.full((40, 40), 230, np.uint8)
    arr[:, :20] = 20
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif, quality=95)
    members = {
        "a/1.jpg": buf.getvalue(),
        "a/2.jpg": buf.getvalue(),
        "b/1.jpg": buf.getvalue(),
        "b/2.jpg": buf.getvalue(),
    }
    x, _ = read_target_data(_zip(members), "d.zip", ["a", "b"], SHAPE)
    top, bottom = x[0, :10].mean(), x[0, -10:].mean()
    left, right = x[0, :, :10].mean(), x[0, :, -10:].mean()
    assert top < 60 and bottom > 190, (top, bottom)
    assert abs(left - right) < 30, (left, right)


def test_stored_uploads_are_compressed(tmp_path: Path) -> None:
    x = np.zeros((10_000, 64, 64), np.uint8)  # 41 MB decoded: a 200x-inflating npz must not become 41 MB on disk
    path = store_upload(tmp_path, x, np.repeat([0, 1], 5000))
    assert path.stat().st_size < 1_000_000, path.stat().st_size


def test_uploads_of_finished_jobs_are_deleted_after_the_retention(tmp_path: Path) -> None:
    factory = init_db(make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}"))
    files = {state: tmp_path / f"{state}.npz" for state in ("succeeded", "failed", "running", "queued", "recent")}
    old = time.time() - 2 * 86400
    with factory.begin() as s:
        pool = PoolRow(name="p", pool_id="0" * 64, n_items=1, path="/p", info={})
        s.add(pool)
        s.flush()
        task = TaskRow(name="t", pool_ref=pool.id, classes=["a", "b"])
        s.add(task)
        s.flush()
        for i, (state, path) in enumerate(files.items()):
            path.write_bytes(b"x")
            v = VersionRow(task_ref=task.id, number=i + 1, spec={}, metrics={})
            s.add(v)
            s.flush()
            s.add(
                JobRow(
                    task_ref=task.id,
                    version_ref=v.id,
                    state="succeeded" if state == "recent" else state,
                    data_path=str(path),
                    updated_at=time.time() if state == "recent" else old,
                )
            )
    gone = sweep_finished_uploads(factory, 86400.0)
    assert sorted(p.name for p in gone) == ["failed.npz", "succeeded.npz"]
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == ["queued.npz", "recent.npz", "running.npz"]
    assert {p.name for p in sweep_finished_uploads(factory, 0.0)} == {"recent.npz"}
    assert os.path.exists(files["running"]) and os.path.exists(files["queued"])


def test_a_pipeline_crash_reaches_the_publisher_without_internal_text(tmp_path: Path) -> None:
    """An unexpected exception (here: the upload file vanished) carries a path in its text; the job's message,
    which the API shows to the publisher, names only the kind of failure."""
    from plada.server.settings import Settings
    from plada.server.worker import Worker

    settings = Settings(data_dir=tmp_path / "data")
    worker = Worker(settings, worker_id="w")
    secret = tmp_path / "very" / "secret" / "upload.npz"
    with worker.factory.begin() as s:
        pool = PoolRow(name="p", pool_id="0" * 64, n_items=1, path=str(tmp_path / "pool"), info={})
        s.add(pool)
        s.flush()
        task = TaskRow(name="t", pool_ref=pool.id, classes=["a", "b"])
        s.add(task)
        s.flush()
        v = VersionRow(
            task_ref=task.id, number=1, spec={"name": "t", "classes": ["a", "b"], "pool_id": "p"}, metrics={}
        )
        s.add(v)
        s.flush()
        s.add(JobRow(task_ref=task.id, version_ref=v.id, data_path=str(secret)))
    assert worker.run_once()
    with worker.factory() as s:
        job = s.query(JobRow).one()
        assert job.error_code == "pipeline_failed"
        assert "secret" not in (job.error_message or "") and str(tmp_path) not in (job.error_message or "")
        assert "FileNotFoundError" in (job.error_message or "")


def _npy_raw(header: bytes) -> bytes:
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


@pytest.mark.parametrize(
    "mangle",
    ["npy header with an open bracket", "unknown zip version", "encrypted member"],
)
def test_library_exceptions_on_hostile_archives_are_invalid_data(mangle: str) -> None:
    """Found by bench/fuzz_inputs.py (500s before): numpy's header parser raises tokenize errors, zipfile
    NotImplementedError or RuntimeError; all are the data's fault."""
    y = io.BytesIO()
    np.save(y, np.repeat([0, 1], 6))
    header = b"{'descr': ([" + b" " * 50 + b"\n"
    data = bytearray(_zip({"x.npy": _npy_raw(header) + b"\0" * 64, "y.npy": y.getvalue()}))
    if mangle == "unknown zip version":
        for sig, off in ((b"PK\x01\x02", 6), (b"PK\x03\x04", 4)):
            at = bytes(data).find(sig)
            data[at + off : at + off + 2] = (151).to_bytes(2, "little")
    elif mangle == "encrypted member":
        for sig, off in ((b"PK\x01\x02", 8), (b"PK\x03\x04", 6)):
            at = bytes(data).find(sig)
            data[at + off] |= 1
    with pytest.raises(InvalidDataError):
        read_target_data(bytes(data), "d.npz", ["a", "b"], SHAPE)


def test_json_logs_give_one_object_a_request_with_its_route(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    import json as _json
    import logging

    from fastapi.testclient import TestClient

    from plada.server.app import create_app
    from plada.server.logs import JsonFormatter
    from plada.server.settings import Settings

    app = create_app(Settings(data_dir=tmp_path / "data", log_format="json"))
    with caplog.at_level(logging.INFO, logger="plada.request"), TestClient(app) as client:
        assert client.get("/v1/tasks/nope").status_code == 404
    lines = [JsonFormatter().format(r) for r in caplog.records if r.name == "plada.request"]
    obj = _json.loads(lines[-1])
    assert obj["route"] == "/v1/tasks/{task}" and obj["status"] == 404 and obj["path"] == "/v1/tasks/nope"
    assert obj["level"] == "info" and obj["ms"] >= 0
