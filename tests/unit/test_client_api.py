"""PladaClient against httpx.MockTransport: foreign errors are mapped, payloads are verified."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

import plada.client
from plada.client import PayloadCache, PladaClient
from plada.shared.errors import (
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


def test_public_surface_is_pinned() -> None:
    assert plada.client.__all__ == sorted(plada.client.__all__)
    assert set(plada.client.__all__) == {
        "Agent",
        "AgentConfig",
        "Download",
        "PayloadCache",
        "PayloadDataset",
        "PladaClient",
        "TrainConfig",
        "check_pool",
        "default_cache_dir",
        "load_eval_split",
        "train_student",
    }


def test_fetch_verifies_and_uses_etag_cache(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = _payload_bytes()
    calls: list[httpx.Request] = []
    cache = PayloadCache(tmp_path)
    with PladaClient("http://plada.test", transport=_serving(data, calls=calls)) as c:
        _, d1 = c.fetch("t", cache=cache)
        p2, d2 = c.fetch("t", cache=cache)
    assert d1 == d2 == data and p2.version == 2 and list(p2.indices) == [1, 5, 9]
    assert "If-None-Match" not in calls[0].headers and calls[1].headers["If-None-Match"] == f'"{payload_sha256(data)}"'


def test_damaged_cache_entry_is_not_used(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = _payload_bytes()
    cache = PayloadCache(tmp_path)
    with PladaClient("http://plada.test", transport=_serving(data)) as c:
        c.fetch("t", cache=cache)
        blob = tmp_path / "payloads" / f"{payload_sha256(data)}.plada"
        blob.write_bytes(data[:-3])
        _, d = c.fetch("t", cache=cache)
    assert d == data and blob.read_bytes() == data


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
