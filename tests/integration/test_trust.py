"""Who owns a task, and uploads that cannot exhaust the host: each test tries to break one property against a
real uvicorn over a real SQLite file (and PostgreSQL, where the api_stack fixture runs both)."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from test_api import GOOD, SPEC, _counts, _post, assert_problem

from harness.local import LocalStack


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_only_the_owner_publishes_new_versions(api_stack: LocalStack) -> None:
    spec = SPEC | {"name": "owned", "access": "token"}
    alice, mallory = api_stack.token("publish", "team-a"), api_stack.token("publish", "team-b")
    assert _post(api_stack, spec, GOOD, token=alice).status_code == 202
    before = _counts(api_stack)
    for tok in (mallory, api_stack.token("read", "team-a")):
        r = _post(api_stack, SPEC | {"name": "owned"}, GOOD, token=tok)
        assert_problem(r, 403, "forbidden")
        r = _post(api_stack, SPEC | {"name": "owned", "access": "public"}, GOOD, token=tok)
        assert_problem(r, 403, "forbidden")
    assert _counts(api_stack) == before  # nothing written: no version, no job, no upload
    task = httpx.get(f"{api_stack.url}/v1/tasks/owned", headers=_h(alice)).json()
    assert task["access"] == "token" and task["latest_version"] is None
    versions = httpx.get(f"{api_stack.url}/v1/tasks/owned/versions", headers=_h(alice)).json()
    assert versions["count"] == 1
    assert _post(api_stack, SPEC | {"name": "owned"}, GOOD, token=alice).status_code == 202
    # a second token of the same owner (a rotated key, a teammate) publishes too
    made = _cli(api_stack, "token", "create", "--scope", "publish", "--name", "alice-2", "--owner", "team-a")
    assert _post(api_stack, SPEC | {"name": "owned"}, GOOD, token=str(made["token"])).status_code == 202
    assert _post(api_stack, SPEC | {"name": "owned"}, GOOD, token=api_stack.token("admin", "ops")).status_code == 202


def test_access_never_changes_as_a_side_effect(api_stack: LocalStack) -> None:
    owner = api_stack.token("publish", "team-c")
    base = f"{api_stack.url}/v1/tasks"
    assert _post(api_stack, SPEC | {"name": "gated", "access": "token"}, GOOD, token=owner).status_code == 202
    # a republish that omits "access" (the spec most publishers send) keeps the task gated, also while pending
    assert _post(api_stack, SPEC | {"name": "gated"}, GOOD, token=owner).status_code == 202
    assert_problem(httpx.get(f"{base}/gated"), 404, "task_not_found")
    assert_problem(httpx.get(f"{base}/gated/versions"), 404, "task_not_found")
    assert "gated" not in httpx.get(api_stack.url + "/").text
    # an explicit change by the owner is allowed and recorded: who and when
    t0 = time.time()
    assert _post(api_stack, SPEC | {"name": "gated", "access": "public"}, GOOD, token=owner).status_code == 202
    assert httpx.get(f"{base}/gated").json()["access"] == "public"
    hist = httpx.get(f"{base}/gated/history", headers=_h(owner)).json()
    assert hist["owner"] == "team-c"
    actions = [e["action"] for e in hist["data"]]
    assert actions == ["created", "published", "published", "access", "published"], actions
    change = hist["data"][3]
    assert change["detail"] == {"old": "token", "new": "public"} and "team-c" in change["actor"]
    from datetime import datetime

    assert datetime.fromisoformat(change["at"]).timestamp() >= t0 - 1
    # the history names tokens: only the owner and admins read it
    assert_problem(httpx.get(f"{base}/gated/history", headers=_h(api_stack.token("read"))), 403, "forbidden")
    other = api_stack.token("publish", "team-d")
    assert_problem(httpx.get(f"{base}/gated/history", headers=_h(other)), 403, "forbidden")


def test_refused_publishers_are_refused_before_the_body_is_read(api_stack: LocalStack) -> None:
    """Headers that promise a 3 MB body (within the limit), a few bytes sent: the answer (401, 403) must come
    without waiting for a body that never arrives; nothing is spooled to disk."""
    host, port = api_stack.url.removeprefix("http://").split(":")
    for auth, status in (("", 401), (f"Authorization: Bearer {api_stack.token('read')}\r\n", 403)):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            head = (
                f"POST /v1/tasks HTTP/1.1\r\nHost: {host}\r\n{auth}"
                "Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: 3000000\r\n\r\n"
            )
            sock.sendall(head.encode() + b"--xyz\r\n")
            t0 = time.monotonic()
            answer = sock.recv(4096).decode(errors="replace")
            assert answer.startswith(f"HTTP/1.1 {status}"), answer[:200]
            assert time.monotonic() - t0 < 5
    # an authorised publisher announcing more than the limit is refused from the header, before reading
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = (
            f"POST /v1/tasks HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {api_stack.token()}\r\n"
            "Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: 2000000000\r\n\r\n"
        )
        sock.sendall(head.encode())
        assert sock.recv(4096).decode(errors="replace").startswith("HTTP/1.1 413")


def test_a_client_that_hangs_up_mid_upload_is_no_server_error(api_stack: LocalStack) -> None:
    host, port = api_stack.url.removeprefix("http://").split(":")
    log = api_stack.data_dir / "logs" / "server.log"
    before = log.read_text() if log.is_file() else ""
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = (
            f"POST /v1/tasks HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {api_stack.token()}\r\n"
            "Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: 3000000\r\n\r\n"
        )
        sock.sendall(head.encode() + b'--xyz\r\nContent-Disposition: form-data; name="data"; filename="d.npz"\r\n\r\n')
        sock.sendall(b"x" * 200_000)
    time.sleep(1.5)
    assert httpx.get(f"{api_stack.url}/healthz").status_code == 200
    new = (log.read_text() if log.is_file() else "")[len(before) :]
    assert "unhandled error" not in new and "Traceback" not in new, new[-2000:]


def test_a_publish_to_another_owners_task_is_refused_before_its_data_is_read(api_stack: LocalStack) -> None:
    """The spec part comes first (plada-client and httpx send it so): the owner check runs as soon as it is in,
    so a 3 MB data part that never arrives does not delay the 403 (it used to be read, and spooled, first)."""
    owner = api_stack.token("publish", "team-own")
    assert _post(api_stack, SPEC | {"name": "owned-early"}, GOOD, token=owner).status_code == 202
    host, port = api_stack.url.removeprefix("http://").split(":")
    spec = json.dumps(SPEC | {"name": "owned-early"})
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = (
            f"POST /v1/tasks HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {api_stack.token('publish', 'team-x')}"
            "\r\nContent-Type: multipart/form-data; boundary=xyz\r\nContent-Length: 3000000\r\n\r\n"
        )
        form = (
            f'--xyz\r\nContent-Disposition: form-data; name="spec"\r\n\r\n{spec}\r\n'
            '--xyz\r\nContent-Disposition: form-data; name="data"; filename="d.npz"\r\n\r\n'
        )
        sock.sendall(head.encode() + form.encode() + b"x" * 1000)
        t0 = time.monotonic()
        answer = sock.recv(4096).decode(errors="replace")
        assert answer.startswith("HTTP/1.1 403"), answer[:300]
        assert time.monotonic() - t0 < 5


def test_a_streamed_body_over_the_limit_is_cut_off(api_stack: LocalStack) -> None:
    """No Content-Length (chunked): the body is counted while it streams and refused once past the limit."""
    limit = 3_000_000  # the api_stack's PLADA_MAX_UPLOAD_BYTES

    def body():  # type: ignore[no-untyped-def]
        yield b'--b\r\nContent-Disposition: form-data; name="spec"\r\n\r\n' + json.dumps(SPEC).encode() + b"\r\n"
        yield b'--b\r\nContent-Disposition: form-data; name="data"; filename="d.npz"\r\n\r\n'
        for _ in range(limit // 65536 + 40):
            yield b"\0" * 65536

    r = httpx.post(
        f"{api_stack.url}/v1/tasks",
        content=body(),
        headers=_h(api_stack.token()) | {"Content-Type": "multipart/form-data; boundary=b"},
        timeout=30,
    )
    assert_problem(r, 413, "payload_too_large")


def test_json_bodies_are_small(api_stack: LocalStack) -> None:
    url = f"{api_stack.url}/v1/tasks/anything/versions/1/reports"
    r = httpx.post(url, content=b"{" + b" " * (200 << 10) + b"}", headers=_h(api_stack.token("read")))
    assert_problem(r, 413, "payload_too_large")


def _cli(stack: LocalStack, *args: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-m", "plada.server.cli", "--json", *args],
        env=stack._env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_a_database_from_before_ownership_is_upgraded_in_place(tmp_path: Path, world_dir: Path) -> None:
    """A database of the release before owners, made before migrations existed (schema 0005, no
    alembic_version table; duplicate reports): the server infers its revision and upgrades it at start-up; its
    tasks are ownerless, which only an admin may publish to until 'plada-server task chown' gives one."""
    from plada.server import migrate
    from plada.server.db import make_engine
    from plada.shared.pool import open_pool

    stack = LocalStack(data_dir=tmp_path / "data", pools_dir=world_dir / "pools", log_dir=tmp_path / "logs")
    try:
        stack.data_dir.mkdir(parents=True)
        engine = make_engine(f"sqlite:///{stack.data_dir / 'plada.db'}")
        assert migrate.upgrade(engine, "0005") == (None, "0005")
        engine.dispose()
        pool = open_pool(world_dir / "pools" / "mini-v1")
        db = sqlite3.connect(stack.data_dir / "plada.db")
        with db:
            db.execute("DROP TABLE alembic_version")
            db.execute(
                "INSERT INTO pools (name, pool_id, n_items, path, info, created_at) VALUES (?, ?, ?, ?, '{}', 0)",
                (pool.name, pool.pool_id, len(pool), str(pool.root)),
            )
            db.execute(
                "INSERT INTO tasks (name, pool_ref, classes, access, created_at, updated_at) "
                """VALUES ('legacy', 1, '["a", "b"]', 'token', 0, 0)"""
            )
            db.execute(
                "INSERT INTO versions (task_ref, number, status, spec, metrics, created_at) "
                "VALUES (1, 1, 'ready', '{}', '{}', 0)"
            )
            for acc in (0.5, 0.6):
                db.execute(
                    "INSERT INTO reports (version_ref, client_id, student_arch, epochs, accuracy, wall_s, extra, "
                    f"created_at) VALUES (1, 'box', 'smallcnn', 1, {acc}, 1, '{{}}', 0)"
                )
        db.close()
        stack.start_server()
        db = sqlite3.connect(stack.data_dir / "plada.db")
        assert db.execute("SELECT version_num FROM alembic_version").fetchone() == (migrate.head(),)
        assert db.execute("SELECT owner, access FROM tasks WHERE name = 'legacy'").fetchone() == (None, "token")
        assert db.execute("SELECT accuracy FROM reports").fetchall() == [(0.6,)]  # the client's newest kept
        db.close()
        spec = SPEC | {"name": "legacy"}
        assert_problem(_post(stack, spec, GOOD, token=stack.token("publish", "team-a")), 403, "forbidden")
        assert _post(stack, spec, GOOD, token=stack.token("admin", "ops")).status_code == 202
        assert _cli(stack, "task", "chown", "legacy", "team-a") == {"task": "legacy", "owner": "team-a"}
        assert _post(stack, spec, GOOD, token=stack.token("publish", "team-a")).status_code == 202
        hist = _cli(stack, "task", "history", "legacy")
        assert [e["action"] for e in hist["history"]] == ["published", "owner", "published"]  # type: ignore[index]
        assert httpx.get(f"{stack.url}/v1/tasks/legacy").status_code == 404  # still gated: access kept
    finally:
        stack.stop()


@pytest.mark.parametrize("owner", ["", "../x", "a b", "x" * 200])
def test_bad_owner_names_are_refused_by_the_cli(api_stack: LocalStack, owner: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "plada.server.cli", "token", "create", "--scope", "publish", "--owner", owner],
        env=api_stack._env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


def test_a_token_name_is_never_rewritten_into_an_owner(api_stack: LocalStack) -> None:
    def create(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "plada.server.cli", "--json", "token", "create", "--scope", "publish", *extra],
            env=api_stack._env(),
            capture_output=True,
            text=True,
            timeout=60,
        )

    out = create("--name", "team/a")  # once silently the owner "team-a", who may publish to team-a's tasks
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "give --owner" in out.stderr, out.stderr
    out = create("--name", "team/a", "--owner", "team-b")
    assert out.returncode == 0 and json.loads(out.stdout)["owner"] == "team-b"
    assert json.loads(create("--name", "team-c").stdout)["owner"] == "team-c"  # a name that is an owner as it is


def test_specs_that_can_never_succeed_are_refused_at_post(api_stack: LocalStack) -> None:
    """U+1D160 becomes three code points (12 UTF-8 bytes) under NFC: 1,500 such class names fit the spec
    (400 KB) but not a payload header (1.2 MB > 1 MiB). Refused at POST with 422, not after three worker
    attempts; nothing written."""
    before = _counts(api_stack)
    grows = [f"{i}" + "\U0001d160" * 65 for i in range(1500)]
    spec = json.dumps(SPEC | {"name": "nfc", "classes": grows}, ensure_ascii=False)
    body = assert_problem(_post(api_stack, spec, GOOD), 422, "invalid_spec")
    assert "payload header holds at most" in str(body["detail"])
    for bad in (
        SPEC | {"teacher": {"seed": 10**40}},
        SPEC | {"teacher": {"epochs": 10**40}},
        "[" * 50_000 + "]" * 50_000,
        json.dumps(SPEC)[:-1] + ', "teacher": ' + '{"a": ' * 20 + "1" + "}" * 21,
        json.dumps(SPEC)[:-1] + ', "teacher": {"seed": ' + "9" * 5000 + "}}",  # past Python's 4,300 digits
        SPEC | {"teacher": {"arch": "no_such_arch"}},  # refused at POST, not after three worker attempts
    ):
        assert_problem(_post(api_stack, bad, GOOD), 422, "invalid_spec")
    assert _counts(api_stack) == before


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 30_000 + b"]" * 30_000,
        b'{"client_id": "a", "student_arch": "s", "epochs": 1, "wall_s": 1, "extra": '
        + b'{"a":' * 5000
        + b"1"
        + b"}" * 5001,
        b'{"client_id": "a", "student_arch": "s", "epochs": 1e999, "wall_s": 1}',
        b'{"client_id": "a", "student_arch": "s", "epochs": 1, "wall_s": 1, "n_test": 99999999999999999999999}',
        b'{"client_id": "a", "student_arch": "s", "epochs": 1, "wall_s": 1, "accuracy": NaN}',
        b"\xff\xfe not utf-8",
    ],
)
def test_hostile_report_bodies_get_a_4xx_never_a_5xx(api_stack: LocalStack, body: bytes) -> None:
    assert _post(api_stack, SPEC | {"name": "rep"}, GOOD).status_code == 202
    url = f"{api_stack.url}/v1/tasks/rep/versions/1/reports"
    r = httpx.post(url, content=body, headers=_h(api_stack.token("read")) | {"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    assert r.headers["content-type"].startswith("application/problem+json")


def test_reports_are_one_per_client_paginated_and_rate_limited(tmp_path: Path, world_dir: Path) -> None:
    env = {"PLADA_REPORT_RATE_PER_MIN": "5"}
    with LocalStack(data_dir=tmp_path / "d", pools_dir=world_dir / "pools", log_dir=tmp_path / "l", env=env) as st:
        st.start_server()
        assert _post(st, SPEC | {"name": "rep"}, GOOD).status_code == 202
        db = sqlite3.connect(st.data_dir / "plada.db")
        with db:  # no worker here: mark the version ready by hand
            db.execute("UPDATE versions SET status = 'ready', sha256 = ?", ("0" * 64,))
        db.close()
        url = f"{st.url}/v1/tasks/rep/versions/1/reports"
        h = _h(st.token("read"))
        base = {"student_arch": "smallcnn", "epochs": 1, "wall_s": 1.0}
        for client, acc in (("box-1", 0.5), ("box-2", 0.6), ("box-3", 0.7), ("box-1", 0.9)):
            assert httpx.post(url, json=base | {"client_id": client, "accuracy": acc}, headers=h).status_code == 201
        page = httpx.get(url, params={"limit": 2}).json()
        assert page["count"] == 2 and page["next"]
        rest = httpx.get(st.url + page["next"]).json()
        assert rest["next"] is None
        got = {r["client_id"]: r["accuracy"] for r in page["data"] + rest["data"]}
        assert got == {"box-1": 0.9, "box-2": 0.6, "box-3": 0.7}  # box-1's second report replaced its first
        summary = httpx.get(f"{st.url}/v1/tasks/rep/versions/1").json()["reports"]
        assert summary["count"] == 3 and abs(summary["mean_accuracy"] - 0.7333) < 1e-3
        assert httpx.post(url, json=base | {"client_id": "box-4"}, headers=h).status_code == 201  # 5th this minute
        r = httpx.post(url, json=base | {"client_id": "box-5"}, headers=h)
        assert_problem(r, 429, "rate_limited")
        assert int(r.headers["Retry-After"]) >= 1


def test_a_report_belongs_to_whoever_wrote_it_first(tmp_path: Path, world_dir: Path) -> None:
    """Client ids are public: team B's token must not replace team A's "alice-lab" report (same report id)."""
    with LocalStack(data_dir=tmp_path / "d", pools_dir=world_dir / "pools", log_dir=tmp_path / "l") as st:
        st.start_server()
        assert _post(st, SPEC | {"name": "rep"}, GOOD).status_code == 202
        db = sqlite3.connect(st.data_dir / "plada.db")
        with db:
            db.execute("UPDATE versions SET status = 'ready', sha256 = ?", ("0" * 64,))
        db.close()
        url = f"{st.url}/v1/tasks/rep/versions/1/reports"
        base = {"client_id": "alice-lab", "student_arch": "smallcnn", "epochs": 1, "wall_s": 1.0}
        team_a, team_b = _h(st.token("read", "team-a")), _h(st.token("read", "team-b"))
        assert httpx.post(url, json=base | {"accuracy": 0.91}, headers=team_a).status_code == 201
        r = httpx.post(url, json=base | {"accuracy": 0.05}, headers=team_b)
        assert_problem(r, 403, "forbidden")
        assert "report under your own --client-id" in r.json()["detail"]
        assert [x["accuracy"] for x in httpx.get(url).json()["data"]] == [0.91]
        assert httpx.post(url, json=base | {"accuracy": 0.93}, headers=team_a).status_code == 201  # its own: fine
        assert httpx.post(url, json=base | {"client_id": "bob-lab", "accuracy": 0.5}, headers=team_b).status_code == 201
        assert httpx.post(url, json=base | {"accuracy": 0.9}, headers=_h(st.token("admin"))).status_code == 201
        rows = {x["client_id"]: x["accuracy"] for x in httpx.get(url).json()["data"]}
        assert rows == {"alice-lab": 0.9, "bob-lab": 0.5} and "reporter" not in httpx.get(url).text


def test_the_dashboard_stays_small_with_thousands_of_reports_and_dozens_of_jobs(
    tmp_path: Path, world_dir: Path
) -> None:
    """3,000 reports on one version and 40 active jobs: the page plots the latest 200 reports, lists every
    active job once, and its script reloads at most every 15 s (a page that can never match the job list
    must not reload in a loop)."""
    env = {"PLADA_PUBLISH_RATE_PER_MIN": "1000"}
    with LocalStack(data_dir=tmp_path / "d", pools_dir=world_dir / "pools", log_dir=tmp_path / "l", env=env) as st:
        st.start_server()
        for i in range(40):
            assert _post(st, SPEC | {"name": f"busy-{i}"}, GOOD).status_code == 202
        db = sqlite3.connect(st.data_dir / "plada.db")
        with db:
            db.execute(
                "UPDATE versions SET status = 'ready', sha256 = ?, size_bytes = 900 WHERE task_ref = 1", ("0" * 64,)
            )
            db.executemany(
                "INSERT INTO reports (version_ref, client_id, student_arch, epochs, accuracy, wall_s, extra, "
                "created_at) VALUES (1, ?, 'smallcnn', 1, 0.5, 1, '{}', 0)",
                [(f"box-{i}",) for i in range(3000)],
            )
            db.execute("UPDATE jobs SET state = 'succeeded' WHERE task_ref = 1")
        db.close()
        page = httpx.get(st.url + "/", timeout=30).text
        assert page.count('class="pt-reported"') == 200
        assert page.count('class="job-active"') == 39  # every active job, so the poller finds them all
        assert "sessionStorage" in page and "15000" in page
        assert len(page) < 200_000, len(page)


def test_uploads_in_flight_are_bounded_before_their_bodies_are_read(tmp_path: Path, world_dir: Path) -> None:
    """One slot (PLADA_MAX_CONCURRENT_UPLOADS=1) held by a publisher that sends its body slowly: a second
    publisher waits for the slot (10 s) and gets 429 without its body being read; once the first upload is
    gone, publishing works again."""
    env = {"PLADA_MAX_CONCURRENT_UPLOADS": "1"}
    with LocalStack(data_dir=tmp_path / "d", pools_dir=world_dir / "pools", log_dir=tmp_path / "l", env=env) as st:
        st.start_server()
        host, port = st.url.removeprefix("http://").split(":")
        slow = socket.create_connection((host, int(port)), timeout=30)
        slow.sendall(
            (
                f"POST /v1/tasks HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {st.token()}\r\n"
                "Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: 2000000\r\n\r\n--xyz\r\n"
            ).encode()
        )
        time.sleep(0.5)  # the first publish has its slot and waits for the rest of its body
        t0 = time.monotonic()
        r = _post(st, SPEC | {"name": "second"}, GOOD)
        assert_problem(r, 429, "rate_limited")
        assert 9 <= time.monotonic() - t0 < 20 and r.headers["Retry-After"]
        slow.close()
        deadline = time.monotonic() + 20
        while (r := _post(st, SPEC | {"name": "second"}, GOOD)).status_code == 429 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert r.status_code == 202, r.text


def test_a_queued_job_is_cancelled_by_its_owner_only(api_stack: LocalStack) -> None:
    owner = api_stack.token("publish", "team-cancel")
    r = _post(api_stack, SPEC | {"name": "to-cancel"}, GOOD, token=owner)
    assert r.status_code == 202
    job = r.json()["job"]["id"]
    url = f"{api_stack.url}/v1/jobs/{job}"
    assert_problem(httpx.delete(url), 401, "unauthorized")
    assert_problem(httpx.delete(url, headers=_h(api_stack.token("publish", "team-other"))), 403, "forbidden")
    assert httpx.get(url).json()["state"] == "queued"
    done = httpx.delete(url, headers=_h(owner))
    assert done.status_code == 200 and done.json()["state"] == "cancelled"
    assert done.json()["error"]["code"] == "job_cancelled"
    anon = httpx.get(url).json()  # who cancelled (token id, name, owner) is for admins only
    assert anon["error"]["message"] == "cancelled by the task's owner or an admin"
    assert "team-cancel" not in json.dumps(anon) and "token" not in anon["error"]["message"]
    version = httpx.get(f"{api_stack.url}/v1/tasks/to-cancel/versions/1").json()
    assert version["status"] == "cancelled" and version["sha256"] is None
    assert_problem(httpx.delete(url, headers=_h(owner)), 409, "job_finished")
    assert_problem(httpx.delete(f"{api_stack.url}/v1/jobs/99999", headers=_h(owner)), 404, "job_not_found")


def test_metrics_report_requests_by_route_and_the_job_queue(api_stack: LocalStack) -> None:
    assert _post(api_stack, SPEC | {"name": "metered"}, GOOD).status_code == 202
    httpx.get(f"{api_stack.url}/v1/tasks/metered")
    httpx.get(f"{api_stack.url}/v1/tasks/no-such-task")
    r = httpx.get(f"{api_stack.url}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'plada_http_requests_total{method="GET",route="/v1/tasks/{task}",status="200"}' in text
    assert 'route="/v1/tasks/{task}",status="404"' in text
    assert "no-such-task" not in text and "metered" not in text  # templates, never raw paths
    assert 'plada_http_request_duration_seconds_bucket{le="0.005",method="GET",route="/v1/tasks/{task}"}' in text
    queued = next(line for line in text.splitlines() if line.startswith('plada_jobs{state="queued"}'))
    assert float(queued.split()[-1]) >= 1
    assert "plada_jobs_finished_total" in text and "plada_payload_bytes_served_total" in text


def test_hot_snapshots_are_bounded_in_time(tmp_path: Path, world_dir: Path) -> None:
    """With PLADA_SNAPSHOT_TTL_S=1 a revoked token may still read for up to a second, never longer."""
    env = {"PLADA_SNAPSHOT_TTL_S": "1"}
    with LocalStack(data_dir=tmp_path / "d", pools_dir=world_dir / "pools", log_dir=tmp_path / "l", env=env) as st:
        st.start_server()
        made = _cli(st, "token", "create", "--scope", "read", "--name", "short")
        assert _post(st, SPEC | {"name": "snap", "access": "token"}, GOOD).status_code == 202
        h = _h(str(made["token"]))
        assert httpx.get(f"{st.url}/v1/tasks/snap", headers=h).status_code == 200
        _cli(st, "token", "revoke", str(made["id"]))
        time.sleep(1.3)
        assert_problem(httpx.get(f"{st.url}/v1/tasks/snap", headers=h), 401, "unauthorized")
        assert httpx.get(f"{st.url}/healthz").json()["database"] == "ok"


def test_latest_long_poll_returns_as_soon_as_a_new_version_is_ready(tmp_path: Path, world_dir: Path) -> None:
    """?wait=S with If-None-Match holds the 304 until a new version is ready (then its bytes) or S passes."""
    import threading

    from plada.server.blobs import BlobStore

    with LocalStack(data_dir=tmp_path / "d", pools_dir=world_dir / "pools", log_dir=tmp_path / "l") as st:
        st.start_server()
        for _ in range(2):
            assert _post(st, SPEC | {"name": "lp"}, GOOD).status_code == 202
        blobs = BlobStore(st.data_dir / "blobs")
        sha1, sha2 = blobs.put(b"first version bytes"), blobs.put(b"second version bytes")
        db = sqlite3.connect(st.data_dir / "plada.db")
        with db:  # no worker here: version 1 ready by hand
            db.execute("UPDATE versions SET status = 'ready', sha256 = ? WHERE number = 1", (sha1,))
            db.execute("UPDATE tasks SET latest_version = 1")
        url = f"{st.url}/v1/tasks/lp/payload"
        t0 = time.monotonic()
        r = httpx.get(url, params={"wait": 2}, headers={"If-None-Match": f'"{sha1}"'}, timeout=30)
        assert r.status_code == 304 and 1.9 <= time.monotonic() - t0 < 6  # held, then the same answer

        def publish_v2() -> None:
            time.sleep(1.5)
            own = sqlite3.connect(st.data_dir / "plada.db")
            with own:
                own.execute("UPDATE versions SET status = 'ready', sha256 = ? WHERE number = 2", (sha2,))
                own.execute("UPDATE tasks SET latest_version = 2")
            own.close()

        threading.Thread(target=publish_v2).start()
        t0 = time.monotonic()
        r = httpx.get(url, params={"wait": 30}, headers={"If-None-Match": f'"{sha1}"'}, timeout=60)
        took = time.monotonic() - t0
        assert r.status_code == 200 and r.content == b"second version bytes" and r.headers["x-plada-version"] == "2"
        assert 1.4 <= took < 5, took  # at once after the new version, not at the end of the 30 s
        db.close()
        assert_problem(httpx.get(url, params={"wait": 61}), 422, "validation_error")
