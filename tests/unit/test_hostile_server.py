"""The client against a small hostile (or broken) HTTP server on a loopback port: every byte from the network is
treated as hostile. Each test tries to break one property: bounded bodies, a deadline per call, what is
verified is what was asked for, names never become paths, printed text is safe, one-line errors, an agent
that keeps going, and a cache that is safe under concurrency."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from plada.client import PladaClient
from plada.client.agent import Agent, AgentConfig
from plada.client.cache import PayloadCache
from plada.client.train import TrainConfig
from plada.shared.cli import safe_text
from plada.shared.errors import ClientError, ServerResponseError, ServerUnavailableError, VerificationError
from plada.shared.payload import Payload, encode_payload, payload_sha256
from plada.shared.pool import Pool, write_array_pool

Route = Callable[[BaseHTTPRequestHandler], None]


class Hostile:
    """A threaded HTTP server whose answers the test sets per path."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: list[str] = []
        hostile = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_a: object) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                hostile.hits.append(path)
                route = hostile.routes.get(path)
                if route is None:
                    send(self, 404, b'{"code": "task_not_found", "detail": "nothing here"}', "application/problem+json")
                else:
                    route(self)

            do_POST = do_GET

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, *_a: object) -> None:
                """A client that hangs up on a hostile answer is the point of these tests; the default
                handler would print a traceback onto the stderr the tests capture and read."""

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def send(h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str = "application/json", **headers: str) -> None:
    h.send_response(status)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(len(body)))
    for k, v in headers.items():
        h.send_header(k.replace("_", "-"), v)
    h.end_headers()
    h.wfile.write(body)


def payload_route(data: bytes, version: int, **extra: str) -> Route:
    sha = payload_sha256(data)

    def route(h: BaseHTTPRequestHandler) -> None:
        headers = {"ETag": f'"{sha}"', "X_Plada_Version": str(version)} | extra
        send(h, 200, data, "application/vnd.plada.payload", **headers)

    return route


@pytest.fixture()
def server() -> Iterator[Hostile]:
    s = Hostile()
    yield s
    s.close()


@pytest.fixture()
def tiny(tmp_path: Path) -> Pool:
    rng = np.random.default_rng(0)
    return write_array_pool(
        tmp_path / "pool", "tiny", rng.integers(0, 255, (300, 12, 12), dtype=np.uint8), [f"k{i}" for i in range(300)]
    )


def make_payload(pool: Pool, *, task: str = "t", version: int = 2) -> bytes:
    return encode_payload(
        Payload(
            indices=np.arange(0, 300, 3),
            labels=np.repeat([0, 1], 50),
            classes=("a", "b"),
            pool_id=pool.pool_id,
            n_pool=len(pool),
            task=task,
            version=version,
            pool_name=pool.name,
        )
    )


# -- bounded bodies --------------------------------------------------------------------------------------------


def test_a_compressed_body_is_never_inflated(server: Hostile) -> None:
    """64 KB of gzip that would inflate to 64 MB of JSON: the client asked for identity and refuses it
    without inflating (peak memory stays far below the inflated size)."""
    bomb = gzip.compress(b'{"data": [' + b" " * (64 << 20) + b"]}")
    assert len(bomb) < 100_000
    seen: dict[str, str] = {}

    def route(h: BaseHTTPRequestHandler) -> None:
        seen["accept"] = h.headers.get("Accept-Encoding", "")
        send(h, 200, bomb, Content_Encoding="gzip")

    server.routes["/v1/tasks"] = route
    tracemalloc.start()
    with PladaClient(server.url, retries=0) as c, pytest.raises(ServerResponseError, match="gzip-encoded body"):
        c.tasks()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert seen["accept"] == "identity"
    assert peak < 8 << 20, peak


def test_bodies_are_capped_while_streaming(server: Hostile) -> None:
    def endless(h: BaseHTTPRequestHandler) -> None:  # no Content-Length: the cap must hold on the stream itself
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        chunk = b"[" * 65536
        try:
            for _ in range(1000):  # 64 MB
                h.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        except OSError:
            pass

    server.routes["/v1/tasks"] = endless
    with PladaClient(server.url, retries=0) as c, pytest.raises(ServerResponseError, match="more than 8,388,608"):
        c.tasks()
    server.routes["/v1/tasks/t/payload"] = lambda h: (
        h.send_response(200),
        h.send_header("Content-Length", str(1 << 40)),
        h.end_headers(),
    )
    with PladaClient(server.url, retries=0) as c, pytest.raises(ServerResponseError, match="announced"):
        c.download("t")


# -- deadlines -------------------------------------------------------------------------------------------------


def test_a_trickling_server_cannot_stall_a_call(server: Hostile) -> None:
    """One header byte every 0.3 s, each read well inside the 2 s read timeout: only the deadline ends it."""

    def trickle(h: BaseHTTPRequestHandler) -> None:
        try:
            for b in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 1000:
                h.wfile.write(bytes([b]))
                h.wfile.flush()
                time.sleep(0.3)
        except OSError:
            pass

    server.routes["/v1/tasks"] = trickle
    t0 = time.monotonic()
    with (
        PladaClient(server.url, timeout=2.0, deadline=3.0) as c,
        pytest.raises(ServerUnavailableError, match="within 3 s"),
    ):
        c.tasks()
    assert time.monotonic() - t0 < 6.0


# -- what is verified is what was asked for --------------------------------------------------------------------


def test_version_and_task_must_match_the_request(server: Hostile, tiny: Pool, tmp_path: Path) -> None:
    v2 = make_payload(tiny, version=2)
    server.routes["/v1/tasks/t/versions/3/payload"] = payload_route(v2, version=3)  # old bytes, newer number
    with PladaClient(server.url, cache_dir=tmp_path / "c") as c:
        with pytest.raises(VerificationError, match="labelled a payload of 't' version 3, but the payload says 2"):
            c.fetch("t", 3, pool=tiny)
        server.routes["/v1/tasks/t/versions/3/payload"] = payload_route(v2, version=2)
        with pytest.raises(VerificationError, match="asked for version 3"):
            c.fetch("t", 3, pool=tiny)
        server.routes["/v1/tasks/t/payload"] = payload_route(make_payload(tiny, task="other", version=2), version=2)
        with pytest.raises(VerificationError, match="for task 'other'"):
            c.fetch("t", pool=tiny)


def test_latest_cannot_roll_back(server: Hostile, tiny: Pool, tmp_path: Path) -> None:
    server.routes["/v1/tasks/t/payload"] = payload_route(make_payload(tiny, version=3), version=3)
    with PladaClient(server.url, cache_dir=tmp_path / "c") as c:
        assert c.fetch("t", pool=tiny).version == 3
        server.routes["/v1/tasks/t/payload"] = payload_route(make_payload(tiny, version=2), version=2)
        with pytest.raises(VerificationError, match="rollback protection"):
            c.fetch("t", pool=tiny)


@pytest.mark.parametrize(
    ("headers", "match"),
    [
        ({"ETag": '"abc"', "X_Plada_Version": "2"}, "no usable ETag"),
        ({"X_Plada_Version": "two"}, "no usable X-Plada-Version"),
        ({"X_Plada_Version": "2", "X_Plada_Signature": "ed25519:x:" + "A" * 5000}, "signature"),
    ],
)
def test_bad_headers_are_one_line_errors(
    server: Hostile, tiny: Pool, tmp_path: Path, headers: dict[str, str], match: str
) -> None:
    data = make_payload(tiny, version=2)
    sha = payload_sha256(data)
    server.routes["/v1/tasks/t/payload"] = lambda h: send(h, 200, data, **({"ETag": f'"{sha}"'} | headers))
    with PladaClient(server.url, cache_dir=tmp_path / "c") as c, pytest.raises(VerificationError, match=match):
        c.fetch("t", pool=tiny)


# -- redirects: followed only where allowed, verified against the API's own answer -----------------------------


def redirect_route(location: str, data: bytes, version: int = 2, status: int = 307) -> Route:
    """The API's answer with a blob URL: ETag and version here, bytes at ``location``."""
    sha = payload_sha256(data)
    return lambda h: send(h, status, b"", ETag=f'"{sha}"', X_Plada_Version=str(version), Location=location)


def blob_route(data: bytes, seen: list[dict[str, str]]) -> Route:
    """A blob host: plain bytes with its own (useless) ETag; records the headers it was sent."""

    def route(h: BaseHTTPRequestHandler) -> None:
        seen.append(dict(h.headers.items()))
        send(h, 200, data, "application/octet-stream", ETag='"not-a-sha256"')

    return route


@pytest.fixture()
def cdn() -> Iterator[Hostile]:
    s = Hostile()
    yield s
    s.close()


def test_a_same_origin_redirect_is_followed_with_the_token(server: Hostile, tiny: Pool, tmp_path: Path) -> None:
    data, seen = make_payload(tiny, version=2), []
    server.routes["/v1/tasks/t/payload"] = redirect_route("/blobs/sha256/ab/x", data)
    server.routes["/blobs/sha256/ab/x"] = blob_route(data, seen)
    with PladaClient(server.url, token="tok", cache_dir=tmp_path / "c") as c:
        payload = c.fetch("t", pool=tiny)
        assert payload.version == 2 and c.cache.get(payload_sha256(data)) == data
    assert seen[0].get("Authorization") == "Bearer tok"  # its own server: the token goes along


def test_a_redirect_elsewhere_is_refused_unless_configured(
    server: Hostile, cdn: Hostile, tiny: Pool, tmp_path: Path
) -> None:
    data, seen = make_payload(tiny, version=2), []
    server.routes["/v1/tasks/t/payload"] = redirect_route(f"{cdn.url}/plada/blobs/sha256/ab/x", data)
    cdn.routes["/plada/blobs/sha256/ab/x"] = blob_route(data, seen)
    with PladaClient(server.url, token="tok", cache_dir=tmp_path / "c") as c:
        with pytest.raises(VerificationError, match=r"not http://127\.0\.0\.1:.*refused"):
            c.fetch("t", pool=tiny)
        assert cdn.hits == [] and c.cache.find("t", "latest") is None
    with PladaClient(server.url, token="tok", cache_dir=tmp_path / "c", blob_base_url=f"{cdn.url}/plada/blobs/") as c:
        assert c.fetch("t", pool=tiny).version == 2
    assert "Authorization" not in seen[0]  # another origin never sees the server's token


@pytest.mark.parametrize(
    "path",
    ["/plada/blobsX/sha256/ab/x", "/plada/blobs/../secret", "/other/sha256/ab/x"],
    ids=["prefix-trick", "dot-dot", "outside"],
)
def test_only_urls_under_the_blob_base_are_followed(
    server: Hostile, cdn: Hostile, tiny: Pool, tmp_path: Path, path: str
) -> None:
    data = make_payload(tiny, version=2)
    server.routes["/v1/tasks/t/payload"] = redirect_route(cdn.url + path, data)
    with (
        PladaClient(server.url, cache_dir=tmp_path / "c", blob_base_url=f"{cdn.url}/plada/blobs") as c,
        pytest.raises(VerificationError, match="refused"),
    ):
        c.fetch("t", pool=tiny)
    assert cdn.hits == []


def test_bytes_behind_a_redirect_are_verified_against_the_api(
    server: Hostile, cdn: Hostile, tiny: Pool, tmp_path: Path
) -> None:
    """The blob host sends other bytes (an older version, a damaged file): refused, nothing cached."""
    v3, v2 = make_payload(tiny, version=3), make_payload(tiny, version=2)
    server.routes["/v1/tasks/t/payload"] = redirect_route(f"{cdn.url}/b/sha256/ab/x", v3, version=3)
    cdn.routes["/b/sha256/ab/x"] = blob_route(v2, [])
    with PladaClient(server.url, cache_dir=tmp_path / "c", blob_base_url=f"{cdn.url}/b") as c:
        with pytest.raises(VerificationError, match="does not hash to the server's ETag"):
            c.fetch("t", pool=tiny)
        cdn.routes["/b/sha256/ab/x"] = blob_route(v3[:-1] + bytes([v3[-1] ^ 1]), [])
        with pytest.raises(VerificationError, match="does not hash"):
            c.fetch("t", pool=tiny)
        assert c.cache.find("t", "latest") is None and c.cache.get(payload_sha256(v2)) is None


def test_redirect_loops_and_missing_locations_end(server: Hostile, tiny: Pool, tmp_path: Path) -> None:
    data = make_payload(tiny, version=2)
    server.routes["/v1/tasks/t/payload"] = redirect_route("/loop", data)
    server.routes["/loop"] = lambda h: send(h, 302, b"", Location="/loop")
    with PladaClient(server.url, cache_dir=tmp_path / "c") as c:
        with pytest.raises(ServerResponseError, match="more than 3 redirects"):
            c.fetch("t", pool=tiny)
        server.routes["/v1/tasks/t/payload"] = lambda h: send(
            h, 307, b"", ETag=f'"{payload_sha256(data)}"', X_Plada_Version="2"
        )
        with pytest.raises(ServerResponseError, match="without a Location"):
            c.fetch("t", pool=tiny)


@pytest.mark.parametrize("bad", ["ftp://cdn/x", "cdn.example.com/x", "https://cdn/x?sig=1"])
def test_a_bad_blob_base_url_is_a_clear_error(bad: str, tmp_path: Path) -> None:
    with pytest.raises(ClientError, match="PLADA_BLOB_BASE_URL must be"):
        PladaClient("http://127.0.0.1:1", cache_dir=tmp_path, blob_base_url=bad)


# -- names never become paths ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../x", "/etc/passwd", "a/b", "..", "x\x1b[2J", "A"])
def test_task_names_from_anywhere_never_become_paths(tmp_path: Path, tiny: Pool, name: str) -> None:
    cache = PayloadCache(tmp_path / "cache")
    with pytest.raises(VerificationError):
        cache.import_bytes(b"irrelevant", task=name, version=1)
    with pytest.raises(VerificationError):
        cache.set_ref("0123456789abcdef", f"{name}@1", sha="0" * 64, version=1)
    with PladaClient("http://127.0.0.1:9", cache_dir=tmp_path / "cache") as c, pytest.raises(VerificationError):
        c.fetch(name, pool=tiny)
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and "cache" not in p.parts and "pool" not in p.parts]
    assert outside == [] and not (tmp_path / "x").exists()


def test_import_refuses_a_payload_whose_task_name_is_a_path(tmp_path: Path, tiny: Pool) -> None:
    bad = make_payload(tiny, task="../../escape")
    f = tmp_path / "bad.plada"
    f.write_bytes(bad)
    r = run("import", str(f), "--pool", str(tiny.root), "--cache", str(tmp_path / "cache"))
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "not a valid task name" in r.stderr, r.stderr
    assert not (tmp_path / "escape@1.json").exists() and not list(tmp_path.rglob("escape*"))


# -- safe text, one-line errors in every subcommand -------------------------------------------------------------


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plada.client.cli", *args], capture_output=True, text=True, timeout=120, env=os.environ
    )


def test_text_from_the_server_is_printed_safely(server: Hostile) -> None:
    evil = "x\x1b]0;pwned\x07\x1b[2J\u202eevil"
    task = {
        "name": "t",
        "access": "public",
        "classes": ["a", "b"],
        "pool_id": "p",
        "pool_name": evil,
        "latest_version": 1,
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
    }
    server.routes["/v1/tasks"] = lambda h: send(h, 200, json.dumps({"data": [task], "count": 1}).encode())
    r = run("tasks", "--server", server.url)
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout and "\u202e" not in r.stdout and "\\x1b" in r.stdout
    server.routes["/v1/tasks/t/versions"] = lambda h: send(
        h, 500, json.dumps({"code": "boom", "detail": evil + "\nline two"}).encode(), "application/problem+json"
    )
    r = run("versions", "--server", server.url, "--task", "t", "--deadline", "5")
    assert r.returncode == 1 and "\x1b" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert safe_text("ok\u00e9 \u4e2d") == "ok\u00e9 \u4e2d"  # ordinary text in any language is untouched


BROKEN: dict[str, Route] = {
    "malformed JSON": lambda h: send(h, 200, b'{"data": [1, 2,'),
    "wrong types": lambda h: send(h, 200, b'{"data": [{"name": 5}], "count": "x"}'),
    "not an object": lambda h: send(h, 200, b"[1, 2, 3]"),
    "deep JSON": lambda h: send(h, 200, b"[" * 200_000 + b"]" * 200_000),
    "bad gzip": lambda h: send(h, 200, b"\x1f\x8b garbage", Content_Encoding="gzip"),
    "bad payload": lambda h: send(h, 200, b"PLADA\x00garbage", ETag='"' + "0" * 64 + '"', X_Plada_Version="1"),
}


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """plada-client in this process (as fast as a function call), with what it printed."""
    from plada.client.cli import main

    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out.out, out.err)


@pytest.mark.parametrize("kind", list(BROKEN))
def test_every_subcommand_gives_one_line_errors_for_broken_answers(
    server: Hostile, tiny: Pool, tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for path in ("/v1/tasks", "/v1/tasks/t/versions", "/v1/tasks/t/payload"):
        server.routes[path] = BROKEN[kind]
    common = ["--server", server.url, "--deadline", "20"]
    pool = ["--pool", str(tiny.root)]
    out = str(tmp_path / "out")
    for args in (
        ["tasks", *common],
        ["versions", *common, "--task", "t"],
        ["pull", *common, "--task", "t", *pool, "--out", str(tmp_path / "p.plada")],
        ["train", *common, "--task", "t", *pool, "--out", out, "--epochs", "1"],
    ):
        r = cli(capsys, *args)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert r.stderr.startswith("plada-client: error: ") and r.stderr.count("\n") == 1, (args, r.stderr)
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "p.plada").exists()
    r = cli(capsys, "agent", *common, "--task", "t", *pool, "--out", out, "--max-rounds", "2", "--poll", "0.1")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr  # the agent logs it and keeps going
    for args in (["import", str(tmp_path / "nope.plada")], ["inspect", str(tmp_path / "nope.plada")]):
        (tmp_path / "nope.plada").write_bytes(b"PLADA\x00\x01garbage")
        r = cli(capsys, *args)
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr


# -- the agent keeps going -------------------------------------------------------------------------------------


def test_the_agent_survives_broken_rounds_and_trains_once_the_server_recovers(
    server: Hostile, tiny: Pool, tmp_path: Path
) -> None:
    good = make_payload(tiny, version=1)
    answers = iter([BROKEN["malformed JSON"], BROKEN["bad gzip"], payload_route(good, version=1)])
    server.routes["/v1/tasks/t/payload"] = lambda h: next(answers, payload_route(good, version=1))(h)
    cfg = AgentConfig(tasks=["t"], out_dir=tmp_path / "out", poll_s=0.05, train=TrainConfig(epochs=1), report=False)
    with PladaClient(server.url, cache_dir=tmp_path / "c", retries=0) as c:
        done = Agent(c, tiny, cfg).run(max_rounds=4)
    assert done == 1


def test_two_agents_on_one_out_folder_train_a_version_once(server: Hostile, tiny: Pool, tmp_path: Path) -> None:
    server.routes["/v1/tasks/t/payload"] = payload_route(make_payload(tiny, version=1), version=1)
    cfg = AgentConfig(tasks=["t"], out_dir=tmp_path / "out", train=TrainConfig(epochs=2), report=False)
    gate = threading.Barrier(2)
    results: list[bool] = []

    def one(i: int) -> None:
        with PladaClient(server.url, cache_dir=tmp_path / f"c{i}") as c:
            agent = Agent(c, tiny, cfg)
            gate.wait()
            results.append(agent.poll_task("t"))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, True]
    state = json.loads((tmp_path / "out" / "agent-state.json").read_text())
    assert len(state["trained"]["t"]) == 1


# -- the cache under concurrency -------------------------------------------------------------------------------


def test_threads_fetching_one_task_into_one_cache_all_succeed(server: Hostile, tiny: Pool, tmp_path: Path) -> None:
    data = make_payload(tiny, version=1)
    server.routes["/v1/tasks/t/payload"] = payload_route(data, version=1)
    gate = threading.Barrier(8)
    errors: list[BaseException] = []

    def one() -> None:
        try:
            with PladaClient(server.url, cache_dir=tmp_path / "shared") as c:
                gate.wait()
                for _ in range(5):
                    assert c.fetch("t", pool=tiny).sha256 == payload_sha256(data)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    cache = PayloadCache(tmp_path / "shared")
    assert cache.get(payload_sha256(data)) == data
    assert not [p for p in (tmp_path / "shared").rglob(".*tmp*")]  # no temp file left behind


def test_a_long_poll_extends_the_read_timeout_by_the_wait(server: Hostile, tiny: Pool, tmp_path: Path) -> None:
    data = make_payload(tiny, version=1)
    sha = payload_sha256(data)
    seen: list[str] = []

    def held(h: BaseHTTPRequestHandler) -> None:
        seen.append(h.path)
        if h.headers.get("If-None-Match"):
            time.sleep(2.5)  # longer than the 1 s read timeout, shorter than timeout + wait
            h.send_response(304)
            h.send_header("ETag", f'"{sha}"')
            h.send_header("X-Plada-Version", "1")
            h.send_header("Content-Length", "0")
            h.end_headers()
        else:
            payload_route(data, version=1)(h)

    server.routes["/v1/tasks/t/payload"] = held
    with PladaClient(server.url, cache_dir=tmp_path / "c", timeout=1.0, retries=0) as c:
        assert c.fetch("t", pool=tiny).version == 1
        assert c.fetch("t", pool=tiny, wait=5).version == 1  # held 2.5 s, answered 304: from the cache
    assert seen[-1].endswith("?wait=5")


def test_no_cookie_travels_to_a_blob_host_on_the_same_host(
    server: Hostile, cdn: Hostile, tiny: Pool, tmp_path: Path
) -> None:
    """httpx keeps cookies and matches hosts without ports: a cookie the API set went to the blob host on
    another port of 127.0.0.1. plada speaks bearer tokens only: no cookie is ever sent."""
    data, seen = make_payload(tiny, version=2), []
    sha = payload_sha256(data)
    location = f"{cdn.url}/plada/blobs/sha256/ab/x"

    def api(h: BaseHTTPRequestHandler) -> None:
        send(h, 307, b"", ETag=f'"{sha}"', X_Plada_Version="2", Location=location, Set_Cookie="sid=secret; Path=/")

    server.routes["/v1/tasks/t/payload"] = api
    cdn.routes["/plada/blobs/sha256/ab/x"] = blob_route(data, seen)
    with PladaClient(server.url, cache_dir=tmp_path / "c", blob_base_url=f"{cdn.url}/plada/blobs/") as c:
        assert c.fetch("t", pool=tiny).version == 2
        assert c.fetch("t", pool=tiny, wait=0).version == 2  # a second call: the jar holds the cookie by now
    assert seen and all("cookie" not in {k.lower() for k in hdrs} for hdrs in seen), seen


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


@pytest.mark.parametrize(
    "body",
    [
        b"PK\x03\x04" + b"\0" * 60,  # an .npz (np.load hands back an NpzFile, which has no .ndim)
        _npy(np.arange(3, dtype="<i4")).replace(b"(3,)", b"(1099511627776,)"),  # a header claiming 8 TiB
        _npy(np.zeros((2, 2), dtype="<i4")),
        _npy(np.arange(3, dtype="<f4")),
        b"\x93NUMPY\x01\x00\xff\xff{'descr': '<i4', " + b"x" * 100,
    ],
    ids=["npz", "8-TiB-header", "2-D", "floats", "truncated"],
)
def test_hostile_layouts_are_one_line_refusals(server: Hostile, body: bytes, tmp_path: Path) -> None:
    server.routes["/v1/pools/p/layout"] = lambda h: send(h, 200, body, "application/octet-stream")
    with PladaClient(server.url, cache_dir=tmp_path / "c", retries=0) as c, pytest.raises(VerificationError) as e:
        c.pool_layout("p", max_items=1000)
    assert "layout of pool p" in e.value.message and "\n" not in e.value.message


def test_odd_version_metrics_still_print(server: Hostile, capsys: pytest.CaptureFixture[str]) -> None:
    row = {
        "task": "t",
        "version": 1,
        "status": "ready",
        "created_at": "2026-01-01T00:00:00Z",
        "metrics": {"validation": [1, 2], "selection": "x", "reports": None},
    }
    server.routes["/v1/tasks/t/versions"] = lambda h: send(h, 200, json.dumps({"data": [row], "count": 1}).encode())
    r = cli(capsys, "versions", "--server", server.url, "--task", "t")
    assert r.returncode == 0 and "Traceback" not in r.stderr and r.stdout.startswith("version"), r.stderr
