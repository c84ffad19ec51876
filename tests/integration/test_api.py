"""The HTTP API over a real uvicorn + SQLite: shapes, problem+json errors, nothing half-written, offline docs."""

from __future__ import annotations

import io
import json
import re
import threading
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
import sqlalchemy as sa

from harness.local import LocalStack

SPEC = {"name": "tiny", "classes": ["a", "b"], "pool_id": "mini-v1", "keep": 0.01, "teacher": {"epochs": 1}}


def _npz(x: np.ndarray, y: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y)
    return buf.getvalue()


def _bomb() -> bytes:
    """60 MB of zero images in ~60 KB: over the stack's 50 MB inflation limit."""
    buf = io.BytesIO()
    np.savez_compressed(buf, x=np.zeros((15_000, 64, 64), np.uint8), y=np.repeat([0, 1], 7_500))
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return buf.getvalue()


def _png(value: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (28, 28), value).save(buf, format="PNG")
    return buf.getvalue()


def _lying_npy_header() -> bytes:
    h = io.BytesIO()
    np.lib.format.write_array_header_1_0(h, {"descr": "|u1", "fortran_order": False, "shape": (10**7, 4096, 4096)})
    y = io.BytesIO()
    np.save(y, np.repeat([0, 1], 6))
    return _zip({"x.npy": h.getvalue() + b"\0" * 64, "y.npy": y.getvalue()})


GOOD = _npz(np.random.default_rng(0).integers(0, 255, (12, 28, 28), dtype=np.uint8), np.repeat([0, 1], 6))


def _post(
    stack: LocalStack, spec: object, data: bytes, filename: str = "d.npz", token: str | None = ""
) -> httpx.Response:
    """Publish with the stack's publish token (``token=None``: anonymous; a string: that token)."""
    body = spec if isinstance(spec, str) else json.dumps(spec)
    tok = stack.token("publish") if token == "" else token
    headers = {"Authorization": f"Bearer {tok}"} if tok else {}
    return httpx.post(
        f"{stack.url}/v1/tasks", data={"spec": body}, files={"data": (filename, data)}, headers=headers, timeout=30
    )


def _db(stack: LocalStack) -> sa.Engine:
    return sa.create_engine(stack.env.get("PLADA_DATABASE_URL") or f"sqlite:///{stack.data_dir / 'plada.db'}")


def _counts(stack: LocalStack) -> tuple[int, int, int, int]:
    engine = _db(stack)
    try:
        with engine.connect() as con:
            n = tuple(
                con.execute(sa.text(f"SELECT COUNT(*) FROM {t}")).scalar_one() for t in ("tasks", "versions", "jobs")
            )
    finally:
        engine.dispose()
    uploads = len([p for p in (stack.data_dir / "uploads").iterdir()])
    return (*n, uploads)  # type: ignore[return-value]


def assert_problem(resp: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert body["code"] == code and body["status"] == status and body["title"] and body["detail"]
    assert "Traceback" not in resp.text
    return body  # type: ignore[no-any-return]


def test_health_and_pools(api_stack: LocalStack, pool) -> None:  # type: ignore[no-untyped-def]
    assert httpx.get(f"{api_stack.url}/healthz").json()["status"] == "ok"
    pools = httpx.get(f"{api_stack.url}/v1/pools").json()
    assert pools["count"] == 1
    assert pools["data"][0] == {
        "name": "mini-v1",
        "pool_id": pool.pool_id,
        "n_items": 70_000,
        "kind": "array",
        "image_shape": [28, 28, 1],
    }


@pytest.mark.parametrize(
    ("spec", "data", "status", "code"),
    [
        ("{malformed", GOOD, 422, "invalid_spec"),
        (SPEC | {"classes": ["only-one"]}, GOOD, 422, "invalid_spec"),
        (SPEC | {"selector": {"name": "nope"}}, GOOD, 422, "invalid_spec"),
        (SPEC | {"keep": 0.1, "max_bytes": 5000}, GOOD, 422, "invalid_spec"),
        (SPEC | {"pool_id": "imagenet-21k"}, GOOD, 404, "unknown_pool"),
        (SPEC | {"keep": None, "max_bytes": 128}, GOOD, 422, "invalid_spec"),
        (SPEC, b"", 422, "invalid_data"),
        (SPEC, b"PK\x03\x04 this is no archive", 422, "invalid_data"),
        (SPEC, GOOD[: len(GOOD) // 2], 422, "invalid_data"),
        (SPEC, _npz(np.zeros((12, 28, 28), np.float32), np.repeat([0, 1], 6)), 422, "invalid_data"),
        (SPEC, _npz(np.zeros((12, 28, 28), np.uint8), np.repeat([0, 7], 6)), 422, "invalid_data"),
        (SPEC, b"\x00" * 3_000_001, 413, "payload_too_large"),
        (SPEC, b"\x00" * 6_000_000, 413, "payload_too_large"),  # refused on Content-Length, before spooling
        (SPEC, _bomb(), 413, "decompression_bomb"),
        (SPEC, _lying_npy_header(), 413, "decompression_bomb"),  # its header claims 167 TB
        (SPEC, _zip({"../../etc/a/0.png": _png(1), "b/0.png": _png(2)}), 422, "unsafe_archive_path"),
        (SPEC, _zip({"a/0.png": b"\x89PNG\r\n\x1a\n broken", "b/0.png": _png(2)}), 422, "invalid_data"),
        (SPEC | {"classes": []}, GOOD, 422, "invalid_spec"),
        (SPEC | {"classes": [f"c{i}" for i in range(100_000)]}, GOOD, 422, "invalid_spec"),
        (SPEC | {"classes": ["a\u0000", "b"]}, GOOD, 422, "invalid_spec"),
        (json.dumps(SPEC)[:-1] + ', "keep": NaN}', GOOD, 422, "invalid_spec"),
    ],
)
def test_bad_publish_is_refused_and_nothing_is_written(
    api_stack: LocalStack, spec: object, data: bytes, status: int, code: str
) -> None:
    before = _counts(api_stack)
    assert_problem(_post(api_stack, spec, data), status, code)
    assert _counts(api_stack) == before


def test_invalid_spec_lists_every_problem(api_stack: LocalStack) -> None:
    body = assert_problem(_post(api_stack, {"name": "X", "classes": [], "pool_id": ""}, GOOD), 422, "invalid_spec")
    locs = {tuple(e["loc"]) for e in body["errors"]}  # type: ignore[union-attr]
    assert {("name",), ("classes",), ("pool_id",)} <= locs


def test_missing_form_field(api_stack: LocalStack) -> None:
    auth = {"Authorization": f"Bearer {api_stack.token()}"}
    resp = httpx.post(f"{api_stack.url}/v1/tasks", data={"spec": json.dumps(SPEC)}, headers=auth)
    assert_problem(resp, 422, "validation_error")


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v1/nope", 404, "not_found"),
        ("/v1/tasks/ghost", 404, "task_not_found"),
        ("/v1/tasks/ghost/payload", 404, "task_not_found"),
        ("/v1/jobs/999999", 404, "job_not_found"),
        ("/v1/jobs/not-a-number", 422, "validation_error"),
    ],
)
def test_get_errors(api_stack: LocalStack, path: str, status: int, code: str) -> None:
    assert_problem(httpx.get(api_stack.url + path), status, code)


def test_publish_queues_versions_in_order(api_stack: LocalStack) -> None:
    spec = SPEC | {"name": "queued-task"}
    r1 = _post(api_stack, spec, GOOD)
    r2 = _post(api_stack, spec, GOOD)
    assert r1.status_code == r2.status_code == 202
    b1, b2 = r1.json(), r2.json()
    assert (b1["version"], b2["version"]) == (1, 2) and b1["job"]["state"] == "queued"
    assert b1["links"]["job"] == f"/v1/jobs/{b1['job']['id']}"
    versions = httpx.get(f"{api_stack.url}/v1/tasks/queued-task/versions").json()
    assert [v["status"] for v in versions["data"]] == ["pending", "pending"]
    assert_problem(httpx.get(f"{api_stack.url}/v1/tasks/queued-task/versions/1/payload"), 409, "version_not_ready")
    assert_problem(httpx.get(f"{api_stack.url}/v1/tasks/queued-task/payload"), 404, "version_not_found")
    task = httpx.get(f"{api_stack.url}/v1/tasks/queued-task").json()
    assert task["classes"] == ["a", "b"] and task["pool_name"] == "mini-v1" and task["latest_version"] is None


def test_zip_upload_is_accepted(api_stack: LocalStack) -> None:
    import zipfile

    from PIL import Image

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for c in ("a", "b"):
            for i in range(3):
                png = io.BytesIO()
                Image.new("L", (32, 32), 40 * i).save(png, format="PNG")
                zf.writestr(f"{c}/{i}.png", png.getvalue())
    resp = _post(api_stack, SPEC | {"name": "zipped"}, buf.getvalue(), filename="train.zip")
    assert resp.status_code == 202, resp.text


def test_docs_render_offline(api_stack: LocalStack) -> None:
    """/docs and every asset it references come from this server; nothing points off-host."""
    html = httpx.get(f"{api_stack.url}/docs").text
    assert "swagger" in html.lower()
    refs = set(re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)) | set(re.findall(r"url: ?'([^']+)'", html))
    assert refs, "no assets found in /docs"
    external = [r for r in refs if re.match(r"(https?:)?//", r)]
    assert not external, f"/docs references external assets: {external}"
    for ref in refs:
        resp = httpx.get(api_stack.url + ref)
        assert resp.status_code == 200 and len(resp.content) > 0, ref
    spec = httpx.get(f"{api_stack.url}/openapi.json").json()
    assert "/v1/tasks" in spec["paths"] and "/v1/tasks/{task}/payload" in spec["paths"]


def test_uploads_dir_has_only_finished_files(api_stack: LocalStack) -> None:
    names = [p.name for p in Path(api_stack.data_dir / "uploads").iterdir()]
    assert all(n.endswith(".npz") and not n.startswith(".") for n in names)


def test_pool_layout_endpoint(api_stack: LocalStack, pool) -> None:  # type: ignore[no-untyped-def]
    r = httpx.get(f"{api_stack.url}/v1/pools/mini-v1/layout")
    assert r.status_code == 200 and r.headers["x-plada-layout-id"] == pool.layout.layout_id
    groups = np.load(io.BytesIO(r.content), allow_pickle=False)
    assert groups.dtype == np.int32 and len(groups) == 70_000
    assert_problem(httpx.get(f"{api_stack.url}/v1/pools/nope/layout"), 404, "unknown_pool")


def test_reports_are_validated_and_only_taken_for_ready_versions(api_stack: LocalStack) -> None:
    assert _post(api_stack, SPEC | {"name": "report-task"}, GOOD).status_code == 202  # no worker: stays pending
    url = f"{api_stack.url}/v1/tasks/report-task/versions"
    good = {"client_id": "box-1", "student_arch": "smallcnn", "epochs": 3, "accuracy": 0.7, "wall_s": 1.0}
    assert_problem(httpx.post(f"{url}/1/reports", json=good), 401, "unauthorized")  # reports need a token
    h = {"Authorization": f"Bearer {api_stack.token('read')}"}
    assert_problem(httpx.post(f"{url}/1/reports", json=good, headers=h), 409, "version_not_ready")
    assert_problem(httpx.post(f"{url}/9/reports", json=good, headers=h), 404, "version_not_found")
    nope = f"{api_stack.url}/v1/tasks/nope/versions/1/reports"
    assert_problem(httpx.post(nope, json=good, headers=h), 404, "task_not_found")
    for bad in (
        good | {"accuracy": 1.5},
        good | {"client_id": "a b/../c"},
        good | {"extra": {"x": "y" * 5000}},
        {k: v for k, v in good.items() if k != "epochs"},
        good | {"surprise": 1},
    ):
        assert_problem(httpx.post(f"{url}/1/reports", json=bad, headers=h), 422, "validation_error")
    assert httpx.get(f"{url}/1/reports").json() == {"data": [], "count": 0, "next": None}
    assert httpx.get(f"{url}/1").json()["reports"] == {"count": 0, "with_accuracy": 0, "mean_accuracy": None}


def test_dashboard_is_self_contained_html(api_stack: LocalStack) -> None:
    assert _post(api_stack, SPEC | {"name": "dash-<b>"}, GOOD).status_code == 422  # names are checked anyway
    resp = httpx.get(api_stack.url + "/")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    page = resp.text
    assert "<svg" in page or "No tasks yet" in page
    assert "mini-v1" in page and "id=jobs" in page
    refs = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page)
    assert all(r.startswith("/") for r in refs), refs  # no CDN, no external assets
    jobs = httpx.get(f"{api_stack.url}/v1/jobs?active=true").json()
    assert all(j["state"] in ("queued", "running") for j in jobs["data"])


def test_publishing_needs_a_publish_token(api_stack: LocalStack) -> None:
    before = _counts(api_stack)
    r = _post(api_stack, SPEC | {"name": "auth-task"}, GOOD, token=None)
    assert_problem(r, 401, "unauthorized")
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert_problem(_post(api_stack, SPEC | {"name": "auth-task"}, GOOD, token="plada_wrong"), 401, "unauthorized")
    assert_problem(
        _post(api_stack, SPEC | {"name": "auth-task"}, GOOD, token=api_stack.token("read")), 403, "forbidden"
    )
    assert _counts(api_stack) == before  # nothing written by refused publishers


def test_token_gated_tasks_are_invisible_without_a_token(api_stack: LocalStack) -> None:
    assert _post(api_stack, SPEC | {"name": "secret-task", "access": "token"}, GOOD).status_code == 202
    base = f"{api_stack.url}/v1/tasks"
    assert_problem(httpx.get(f"{base}/secret-task"), 404, "task_not_found")
    assert_problem(httpx.get(f"{base}/secret-task/versions"), 404, "task_not_found")
    assert "secret-task" not in [t["name"] for t in httpx.get(base).json()["data"]]
    assert "secret-task" not in httpx.get(api_stack.url + "/").text
    h = {"Authorization": f"Bearer {api_stack.token('read')}"}
    assert httpx.get(f"{base}/secret-task", headers=h).json()["access"] == "token"
    assert "secret-task" in [t["name"] for t in httpx.get(base, headers=h).json()["data"]]


def test_revoked_tokens_stop_working(api_stack: LocalStack) -> None:
    import subprocess
    import sys

    env = api_stack._env()
    made = subprocess.run(
        [sys.executable, "-m", "plada.server.cli", "--json", "token", "create", "--scope", "publish", "--name", "temp"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    tok = json.loads(made.stdout)
    listed = subprocess.run(
        [sys.executable, "-m", "plada.server.cli", "--json", "token", "list"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert tok["token"] not in listed and '"temp"' in listed  # secrets are never listed
    engine = _db(api_stack)
    with engine.connect() as con:
        hashes = [h for (h,) in con.execute(sa.text("SELECT token_hash FROM tokens"))]
    engine.dispose()
    assert tok["token"] not in hashes and all(len(h) == 64 for h in hashes)
    assert _post(api_stack, SPEC | {"name": "revoked-task"}, GOOD, token=tok["token"]).status_code == 202
    subprocess.run(
        [sys.executable, "-m", "plada.server.cli", "token", "revoke", str(tok["id"])],
        env=env,
        check=True,
        capture_output=True,
    )
    assert_problem(_post(api_stack, SPEC | {"name": "revoked-task"}, GOOD, token=tok["token"]), 401, "unauthorized")


def test_publish_rate_limit_answers_429_with_retry_after(tmp_path: Path, world_dir: Path) -> None:
    with LocalStack(
        data_dir=tmp_path / "s", pools_dir=world_dir / "pools", env={"PLADA_PUBLISH_RATE_PER_MIN": "2"}
    ) as s:
        s.start_server()
        codes = [_post(s, SPEC | {"name": "rl"}, GOOD).status_code for _ in range(2)]
        r = _post(s, SPEC | {"name": "rl"}, GOOD)
        assert codes == [202, 202]
        assert_problem(r, 429, "rate_limited")
        assert 1 <= int(r.headers["Retry-After"]) <= 61
        versions = httpx.get(f"{s.url}/v1/tasks/rl/versions").json()
        assert versions["count"] == 2  # the refused publish wrote nothing


def test_rate_limiter_window_slides() -> None:
    from plada.server.auth import RateLimiter
    from plada.shared.errors import RateLimitedError

    rl = RateLimiter(2, window_s=0.3)
    rl.hit("a")
    rl.hit("a")
    rl.hit("b")  # keys are independent
    with pytest.raises(RateLimitedError):
        rl.hit("a")
    import time

    time.sleep(0.35)
    rl.hit("a")


def test_duplicate_task_name_with_other_classes_is_a_conflict(api_stack: LocalStack) -> None:
    spec = SPEC | {"name": "dup"}
    assert _post(api_stack, spec, GOOD).status_code == 202
    before = _counts(api_stack)
    body = assert_problem(_post(api_stack, spec | {"classes": ["b", "a"]}, GOOD), 409, "task_conflict")
    assert "dup" in str(body["detail"]) and "another name" in str(body["detail"])
    assert _counts(api_stack) == before
    again = _post(api_stack, spec, GOOD)  # the same class list is a new version, as always
    assert again.status_code == 202 and again.json()["version"] == 2


def test_concurrent_publishes_of_one_new_task_all_get_distinct_versions(api_stack: LocalStack) -> None:
    """Eight publishers race on a name nobody has used: no 500, no lost publish, versions 1..8."""
    spec = SPEC | {"name": "race"}
    results: list[httpx.Response] = []
    gate = threading.Barrier(8)

    def one() -> None:
        gate.wait()
        results.append(_post(api_stack, spec, GOOD))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [202] * 8, [r.text for r in results if r.status_code != 202]
    assert sorted(r.json()["version"] for r in results) == list(range(1, 9))


def test_unicode_class_names_from_a_macos_zip(api_stack: LocalStack) -> None:
    """Composed names in the spec, decomposed (NFD) folder names in the zip, as macOS Finder writes them."""
    classes = ["caf\u00e9", "\u732b"]
    members = {f"cafe\u0301/{i}.png": _png(i) for i in range(3)} | {f"\u732b/{i}.png": _png(200 + i) for i in range(3)}
    resp = _post(api_stack, SPEC | {"name": "unicode", "classes": classes}, _zip(members), filename="d.zip")
    assert resp.status_code == 202, resp.text
    assert httpx.get(f"{api_stack.url}/v1/tasks/unicode").json()["classes"] == classes
