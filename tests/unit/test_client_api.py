"""PladaClient against httpx.MockTransport: foreign errors are mapped, payloads are verified."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

import plada.client
from plada.client import PayloadCache, PladaClient
from plada.shared.errors import (
    OfflineError,
    PayloadCorruptError,
    ServerResponseError,
    ServerUnavailableError,
    VerificationError,
)
from plada.shared.payload import Payload, encode_payload, payload_sha256

POOL_ID = "cd" * 32


def _payload_bytes(task: str = "t") -> bytes:
    return encode_payload(
        Payload(
            indices=np.array([1, 5, 9]),
            labels=np.array([0, 1, 0]),
            classes=("a", "b"),
            pool_id=POOL_ID,
            n_pool=100,
            task=task,
            version=2,
        )
    )


def _serving(data: bytes, etag: str | None = None, calls: list[httpx.Request] | None = None) -> httpx.MockTransport:
    sha = etag or payload_sha256(data)

    def handler(request: httpx.Request) -> httpx.Response:
        if calls is not None:
            calls.append(request)
        if request.headers.get("If-None-Match") == f'"{sha}"':
            return httpx.Response(304, headers={"ETag": f'"{sha}"', "X-Plada-Version": "2"})
        return httpx.Response(200, content=data, headers={"ETag": f'"{sha}"', "X-Plada-Version": "2"})

    return httpx.MockTransport(handler)


def test_the_public_surface_is_what_the_package_exports() -> None:
    """``__all__`` is the package's real surface: every name resolves to an object defined in the module it is
    said to come from, nothing public is exported beside it, and importing the package (or the client's
    API and CLI) does not import torch — only training does (a fresh interpreter, so this suite's imports
    do not count)."""
    import importlib
    import subprocess
    import sys

    names = plada.client.__all__
    assert names == sorted(names) and len(names) == len(set(names))
    for name in names:
        obj = getattr(plada.client, name)
        assert obj is getattr(importlib.import_module(plada.client._EXPORTS[name]), name)
        assert getattr(obj, "__module__", "") == plada.client._EXPORTS[name], name  # defined there, not re-exported
    public = {n for n in dir(plada.client) if not n.startswith("_") and n not in ("annotations", "importlib")}
    public -= {"TYPE_CHECKING", "Any"}
    submodules = {n for n in public if isinstance(getattr(plada.client, n, None), type(plada))}
    assert public - submodules == set(names)
    with pytest.raises(AttributeError):
        plada.client.not_a_name  # noqa: B018
    probe = (
        "import sys, plada.client, plada.client.api, plada.client.cli; from plada.client import PladaClient; "
        "assert 'torch' not in sys.modules, 'torch imported'; from plada.client import train_student; "
        "assert 'torch' in sys.modules"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-500:]


def test_fetch_verifies_and_uses_etag_cache(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = _payload_bytes()
    calls: list[httpx.Request] = []
    with PladaClient("http://plada.test", cache_dir=tmp_path, transport=_serving(data, calls=calls)) as c:
        p1 = c.fetch("t")
        p2 = c.fetch("t")
        d1, d2 = c.cache.get(p1.sha256), c.cache.get(p2.sha256)  # type: ignore[arg-type]
    assert isinstance(p2, Payload) and p1.sha256 == p2.sha256 == payload_sha256(data)
    assert d1 == d2 == data and p2.version == 2 and list(p2.indices) == [1, 5, 9]
    assert "If-None-Match" not in calls[0].headers and calls[1].headers["If-None-Match"] == f'"{payload_sha256(data)}"'


def test_damaged_cache_entry_is_not_used(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = _payload_bytes()
    with PladaClient("http://plada.test", cache_dir=tmp_path, transport=_serving(data)) as c:
        c.fetch("t")
        blob = tmp_path / "payloads" / f"{payload_sha256(data)}.plada"
        blob.write_bytes(data[:-3])
        p = c.fetch("t")
    assert p.sha256 == payload_sha256(data) and blob.read_bytes() == data


def test_bytes_not_matching_etag_are_refused() -> None:
    data = _payload_bytes()
    with (
        PladaClient("http://plada.test", transport=_serving(data, etag="0" * 64)) as c,
        pytest.raises(VerificationError, match="ETag"),
    ):
        c.fetch("t")


def test_corrupt_payload_with_matching_etag_is_refused() -> None:
    data = bytearray(_payload_bytes())
    data[20] ^= 0x40
    with PladaClient("http://plada.test", transport=_serving(bytes(data))) as c, pytest.raises(PayloadCorruptError):
        c.fetch("t")


def test_payload_for_another_task_is_refused() -> None:
    with (
        PladaClient("http://plada.test", transport=_serving(_payload_bytes("other"))) as c,
        pytest.raises(VerificationError, match="other"),
    ):
        c.fetch("t")


def test_problem_json_becomes_server_response_error() -> None:
    def handler(_r: httpx.Request) -> httpx.Response:
        return httpx.Response(
            404,
            json={"code": "task_not_found", "detail": "no task named 'x'", "status": 404, "title": "Task not found"},
        )

    with (
        PladaClient("http://plada.test", transport=httpx.MockTransport(handler)) as c,
        pytest.raises(ServerResponseError) as info,
    ):
        c.task("x")
    assert info.value.problem_code == "task_not_found" and info.value.http_status == 404


def test_transport_errors_are_retried_then_mapped() -> None:
    attempts = []

    def handler(r: httpx.Request) -> httpx.Response:
        attempts.append(r)
        raise httpx.ConnectError("refused", request=r)

    with (
        PladaClient("http://plada.test", transport=httpx.MockTransport(handler), retries=2) as c,
        pytest.raises(ServerUnavailableError, match="cannot reach"),
    ):
        c.tasks()
    assert len(attempts) == 3


def test_503_is_retried() -> None:
    answers = iter([httpx.Response(503), httpx.Response(200, json={"data": [], "count": 0})])
    with PladaClient("http://plada.test", transport=httpx.MockTransport(lambda _r: next(answers))) as c:
        assert c.tasks() == []


def _layout_server(
    payload_data: bytes, groups: np.ndarray, layout_id: str, calls: list[str] | None = None
) -> httpx.MockTransport:
    import io

    def handler(request: httpx.Request) -> httpx.Response:
        if calls is not None:
            calls.append(request.url.path)
        if request.url.path.endswith("/layout"):
            buf = io.BytesIO()
            np.save(buf, groups.astype("<i4"))
            return httpx.Response(200, content=buf.getvalue(), headers={"X-Plada-Layout-Id": layout_id})
        sha = payload_sha256(payload_data)
        return httpx.Response(200, content=payload_data, headers={"ETag": f'"{sha}"', "X-Plada-Version": "1"})

    return httpx.MockTransport(handler)


def test_fetch_keeps_the_servers_cluster_layout_in_the_cache_once(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The server coded the payload in its pool's cluster order; the client's copy has no clusters. The layout
    is fetched once, checked, and kept in the client cache: the pool's own files are never rewritten."""
    from plada.shared.pool import PoolLayout, open_pool, write_array_pool

    rng = np.random.default_rng(0)
    pool = write_array_pool(
        tmp_path / "pool", "p", rng.integers(0, 255, (500, 8, 8), dtype=np.uint8), [f"k{i}" for i in range(500)]
    )
    clusters = rng.integers(0, 7, 500)
    layout = PoolLayout.from_groups(clusters)
    idx = np.flatnonzero(clusters == 3)
    p = Payload(
        indices=idx,
        labels=np.zeros(len(idx), np.int64),
        classes=("a", "b"),
        pool_id=pool.pool_id,
        n_pool=500,
        task="t",
        version=1,
    )
    data = encode_payload(p, codec="entropy-v1", layout=layout)
    assert "layout" in __import__("plada.shared.payload", fromlist=["x"]).read_header(data)[0]["codec"]
    manifest = (tmp_path / "pool" / "manifest.npz").read_bytes()
    calls: list[str] = []
    for _ in range(2):
        with PladaClient(
            "http://plada.test",
            cache_dir=tmp_path / "cache",
            transport=_layout_server(data, clusters, layout.layout_id, calls),
        ) as c:
            got = c.fetch("t", pool=pool)
            assert np.array_equal(got.indices, idx)
    assert sum(p.endswith("/layout") for p in calls) == 1  # fetched once, then from the cache
    assert open_pool(tmp_path / "pool").layout is None  # the pool is untouched
    assert (tmp_path / "pool" / "manifest.npz").read_bytes() == manifest
    wrong = rng.integers(0, 7, 500)
    other = write_array_pool(
        tmp_path / "pool2", "p", np.asarray(pool.batch(np.arange(500)))[..., 0], [f"k{i}" for i in range(500)]
    )
    with (
        PladaClient("http://plada.test", transport=_layout_server(data, wrong, layout.layout_id)) as c,
        pytest.raises(VerificationError, match="does not match"),
    ):
        c.fetch("t", pool=other)
    assert other.layout is None


def test_offline_fetch_uses_the_cache_and_never_the_network(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = _payload_bytes()
    with PladaClient("http://plada.test", cache_dir=tmp_path, transport=_serving(data)) as c:
        online = c.fetch("t")

    def no_network(r: httpx.Request) -> httpx.Response:
        raise AssertionError(f"offline client touched the network: {r.url}")

    with PladaClient(
        "http://other.test", cache_dir=tmp_path, transport=httpx.MockTransport(no_network), offline=True
    ) as c:
        for version in ("latest", 2):
            got = c.fetch("t", version)
            assert got.sha256 == online.sha256 and list(got.indices) == [1, 5, 9]
        with pytest.raises(OfflineError, match="no cached payload for 'nope'"):
            c.fetch("nope")
        with pytest.raises(OfflineError, match="not asking"):
            c.tasks()


def test_offline_mode_follows_the_environment(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from plada.client.cache import offline_mode

    for value, expected in (("1", True), ("true", True), ("0", False), ("", False)):
        monkeypatch.setenv("PLADA_OFFLINE", value)
        assert offline_mode() is expected
        assert PladaClient("http://x.test").offline is expected


def test_cache_lists_prunes_and_imports(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cache = PayloadCache(tmp_path)
    a, b = _payload_bytes("t"), _payload_bytes("u")
    sha_a = cache.import_bytes(a, task="t", version=2)
    sha_b = cache.put(b)  # no ref points at it
    (tmp_path / "payloads" / ".x.tmp-1").write_bytes(b"half")
    rows = {r["sha256"]: r for r in cache.entries()}
    assert (
        rows[sha_a]["task"] == "t"
        and rows[sha_a]["ok"]
        and rows[sha_a]["refs"]
        == [
            "imported/t@2",
            "imported/t@latest",
        ]
    )
    assert rows[sha_b]["refs"] == []
    assert cache.find("t") == {"sha256": sha_a, "version": 2} and cache.find("t", 3) is None
    would = cache.prune(dry_run=True)
    assert {p.name for p in would} == {f"{sha_b}.plada", ".x.tmp-1"} and all(p.exists() for p in would)
    cache.prune()
    assert [r["sha256"] for r in cache.entries()] == [sha_a]
    cache.prune(everything=True)
    assert cache.entries() == [] and cache.find("t") is None
