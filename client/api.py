"""``PladaClient``: the HTTP client. Every httpx failure becomes a ``ClientError`` subclass.

Payloads are verified before they are returned: the bytes hash to the server's ETag, the container's own
checksum holds, and (when a pool is given) the payload's pool_id is the local pool's.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from plada.client.cache import PayloadCache
from plada.shared.errors import (
    OfflineError,
    PipelineError,
    PoolMismatchError,
    ServerResponseError,
    ServerUnavailableError,
    VerificationError,
)
from plada.shared.payload import Payload, decode_payload, payload_sha256, read_header
from plada.shared.pool import Pool, PoolLayout
from plada.shared.schemas import (
    JobInfo,
    PoolInfo,
    PublishResponse,
    ReportIn,
    ReportInfo,
    TaskInfo,
    TaskSpec,
    VersionInfo,
)
from plada.shared.signing import PublicKey

log = logging.getLogger("plada.client")
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 3
_RETRY_STATUS = {429, 502, 503, 504}


@dataclass(frozen=True)
class Download:
    """A payload download; ``data`` is None when the server answered 304 Not Modified."""

    data: bytes | None
    sha256: str
    version: int
    signature: str | None = None  # the server's X-Plada-Signature


def check_pool(payload: Payload | dict[str, Any], pool: Pool) -> None:
    """Refuse a payload (or a payload header) made for another pool, or another ordering of it."""
    h = payload if isinstance(payload, dict) else payload.header()
    if h["pool_id"] != pool.pool_id or h["n_pool"] != len(pool):
        raise PoolMismatchError(
            f"payload is for pool {h.get('pool_name') or '?'} ({h['pool_id'][:16]}…, "
            f"{h['n_pool']:,} items) but the local pool is {pool.name} "
            f"({pool.pool_id[:16]}…, {len(pool):,} items)"
        )


class PladaClient:
    """The HTTP API as Python: list tasks and versions, fetch verified payloads through a local cache, publish.

    ``cache_dir`` defaults to ``$PLADA_CACHE`` or ``$XDG_CACHE_HOME/plada`` (``~/.cache/plada``). With
    ``offline=True`` (default: ``PLADA_OFFLINE=1`` in the environment) nothing touches the network: ``fetch``
    answers from the cache or raises ``OfflineError``.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        cache_dir: str | Path | None = None,
        transport: httpx.BaseTransport | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        offline: bool | None = None,
        trust: str | PublicKey | None = None,
    ) -> None:
        headers = {"User-Agent": "plada-client"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.cache = PayloadCache(Path(cache_dir) if cache_dir is not None else None)
        self.offline = offline_mode() if offline is None else offline
        pinned = trust if trust is not None else os.environ.get("PLADA_TRUST") or None
        self.trust = PublicKey.parse(pinned) if isinstance(pinned, str) else pinned
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers, transport=transport)

    @property
    def server_key(self) -> str:
        """A filesystem-safe key for this server, used to keep cache refs apart."""
        return hashlib.sha256(self.base_url.encode()).hexdigest()[:16]

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PladaClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _request(self, method: str, url: str, *, retry: bool = True, **kw: Any) -> httpx.Response:
        if self.offline:
            raise OfflineError(f"offline (PLADA_OFFLINE=1): not asking {self.base_url} for {method} {url}")
        attempts = self.retries + 1 if retry else 1
        for attempt in range(attempts):
            try:
                resp = self._http.request(method, url, **kw)
            except httpx.TransportError as exc:
                if attempt + 1 < attempts:
                    time.sleep(min(0.25 * 2**attempt, 4.0))
                    continue
                raise ServerUnavailableError(f"cannot reach {self.base_url}: {type(exc).__name__}: {exc}") from exc
            if resp.status_code in _RETRY_STATUS and attempt + 1 < attempts:
                time.sleep(min(0.25 * 2**attempt, 4.0))
                continue
            if resp.status_code >= 400:
                raise _problem(resp)
            return resp
        raise AssertionError("unreachable")

    def _json(self, url: str) -> Any:
        return self._request("GET", url).json()

    def health(self) -> dict[str, Any]:
        return dict(self._json("/healthz"))

    def pools(self) -> list[PoolInfo]:
        return [PoolInfo.model_validate(p) for p in self._json("/v1/pools")["data"]]

    def tasks(self) -> list[TaskInfo]:
        return [TaskInfo.model_validate(t) for t in self._json("/v1/tasks")["data"]]

    def task(self, name: str) -> TaskInfo:
        return TaskInfo.model_validate(self._json(f"/v1/tasks/{name}"))

    def versions(self, task: str) -> list[VersionInfo]:
        return [VersionInfo.model_validate(v) for v in self._json(f"/v1/tasks/{task}/versions")["data"]]

    def version(self, task: str, version: int) -> VersionInfo:
        return VersionInfo.model_validate(self._json(f"/v1/tasks/{task}/versions/{version}"))

    def pool_layout(self, pool: str) -> tuple[np.ndarray, str]:
        """The server's coding-layout groups for ``pool`` (name or id) and their layout id."""
        resp = self._request("GET", f"/v1/pools/{pool}/layout")
        try:
            groups = np.load(io.BytesIO(resp.content), allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise VerificationError(f"layout of pool {pool!r} is not a readable .npy array: {exc}") from exc
        return groups, resp.headers.get("X-Plada-Layout-Id", "")

    def ensure_layout(self, header: dict[str, Any], pool: Pool) -> None:
        """A payload coded in a layout the local pool lacks: fetch the layout once, verify it, store it."""
        wanted = header.get("codec", {}).get("layout")
        if wanted is None or (pool.layout is not None and pool.layout.layout_id == wanted):
            return
        groups, layout_id = self.pool_layout(header["pool_id"])
        if layout_id != wanted or len(groups) != len(pool) or PoolLayout.from_groups(groups).layout_id != wanted:
            raise VerificationError(f"the server's layout for pool {pool.name} does not match the payload's")
        pool.set_clusters(groups)

    def job(self, job_id: int) -> JobInfo:
        return JobInfo.model_validate(self._json(f"/v1/jobs/{job_id}"))

    def publish(
        self, spec: TaskSpec | dict[str, Any], data: bytes | Path, *, filename: str | None = None
    ) -> PublishResponse:
        """POST a task; ``data`` is the labelled target set (.npz or .zip) as bytes or a path."""
        body_spec = spec.model_dump_json() if isinstance(spec, TaskSpec) else json.dumps(spec)
        if isinstance(data, Path):
            filename = filename or data.name
            data = data.read_bytes()
        files = {"data": (filename or "data.npz", data, "application/octet-stream")}
        resp = self._request("POST", "/v1/tasks", retry=False, data={"spec": body_spec}, files=files)
        return PublishResponse.model_validate(resp.json())

    def report(self, task: str, version: int, report: ReportIn | dict[str, Any]) -> ReportInfo:
        """Tell the publisher how a student trained on this version did (shown on the server's dashboard)."""
        body = report if isinstance(report, ReportIn) else ReportIn.model_validate(report)
        resp = self._request(
            "POST", f"/v1/tasks/{task}/versions/{version}/reports", retry=False, json=body.model_dump(mode="json")
        )
        return ReportInfo.model_validate(resp.json())

    def reports(self, task: str, version: int) -> list[ReportInfo]:
        return [
            ReportInfo.model_validate(r) for r in self._json(f"/v1/tasks/{task}/versions/{version}/reports")["data"]
        ]

    def wait_job(
        self,
        job_id: int,
        *,
        timeout: float = 3600.0,
        poll: float = 0.5,
        on_progress: Callable[[JobInfo], None] | None = None,
    ) -> JobInfo:
        """Poll until the job ends; raises ``PipelineError`` with the server's reason if it failed."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(job_id)
            if on_progress:
                on_progress(info)
            if info.state == "succeeded":
                return info
            if info.state == "failed":
                err = info.error
                raise PipelineError(
                    f"job {job_id} failed: {err.code}: {err.message}" if err else f"job {job_id} failed"
                )
            if time.monotonic() > deadline:
                raise ServerUnavailableError(f"job {job_id} did not finish within {timeout:.0f} s")
            time.sleep(poll)

    def download(self, task: str, version: int | str = "latest", *, etag: str | None = None) -> Download:
        url = f"/v1/tasks/{task}/payload" if version == "latest" else f"/v1/tasks/{task}/versions/{version}/payload"
        headers = {"If-None-Match": f'"{etag}"'} if etag else {}
        resp = self._request("GET", url, headers=headers)
        sha = resp.headers.get("ETag", "").strip('"')
        ver = int(resp.headers.get("X-Plada-Version", "0"))
        sig = resp.headers.get("X-Plada-Signature")
        if resp.status_code == 304:
            return Download(data=None, sha256=sha, version=ver, signature=sig)
        data = resp.content
        if payload_sha256(data) != sha:
            raise VerificationError(
                f"downloaded payload of {task!r} does not hash to the server's ETag "
                f"(got {len(data)} bytes; transfer damaged?)"
            )
        return Download(data=data, sha256=sha, version=ver, signature=sig)

    def fetch(self, task: str, version: int | str = "latest", *, pool: Pool | None = None) -> Payload:
        """A verified payload: from the cache when the server's ETag says it is current (or when offline),
        else downloaded, checked against ``pool`` (pool_id, coding layout) and cached. ``payload.sha256`` is
        its content address; the bytes are ``client.cache.get(payload.sha256)``."""
        if self.offline:
            ref = self.cache.find(task, version)
            if ref is None:
                raise OfflineError(
                    f"offline (PLADA_OFFLINE=1) and no cached payload for {task!r} version {version}; "
                    "pull it while online or 'plada-client import FILE'"
                )
            data = self.cache.get(ref["sha256"])
            assert data is not None
            log.info("offline: using cached payload %s v%s (%s)", task, ref.get("version"), ref["sha256"][:12])
            self._check_signature(ref["sha256"], self.cache.signature(ref["sha256"]))
            return self._verify(task, data, ref["sha256"], pool)
        etag = None
        ref = self.cache.ref(self.server_key, f"{task}@{version}")
        if ref and self.cache.get(ref["sha256"]) is not None:
            etag = ref["sha256"]
        dl = self.download(task, version, etag=etag)
        data = dl.data if dl.data is not None else self.cache.get(dl.sha256)
        if data is None:  # the cache lost it in between: fetch without ETag
            dl = self.download(task, version)
            assert dl.data is not None
            data = dl.data
        signature = dl.signature or self.cache.signature(dl.sha256)
        self._check_signature(dl.sha256, signature)
        payload = self._verify(task, data, dl.sha256, pool)
        self.cache.put(data)
        if signature:
            self.cache.put_signature(dl.sha256, signature)
        self.cache.set_ref(self.server_key, f"{task}@{version}", sha=dl.sha256, version=payload.version)
        self.cache.set_ref(self.server_key, f"{task}@{payload.version}", sha=dl.sha256, version=payload.version)
        return payload

    def _check_signature(self, sha: str, signature: str | None) -> None:
        """With a pinned key (``trust=`` or ``PLADA_TRUST``), unsigned or mis-signed payloads are refused."""
        if self.trust is not None:
            self.trust.verify(sha, signature)

    def signing_key(self) -> PublicKey:
        """The server's public key, for a first pin (trust on first use); compare it out of band."""
        return PublicKey.parse(self._json("/v1/signing-key")["public_key"])

    def _verify(self, task: str, data: bytes, sha: str, pool: Pool | None) -> Payload:
        if pool is not None:  # before decoding: a payload for another pool must say so, not fail to decode
            header = read_header(data)[0]
            check_pool(header, pool)
            if not self.offline:
                self.ensure_layout(header, pool)
        payload = decode_payload(data, expected_sha256=sha, layout=pool.layout if pool is not None else None)
        if payload.task != task:
            raise VerificationError(f"server sent a payload for task {payload.task!r}, asked for {task!r}")
        return payload


def offline_mode() -> bool:
    """``PLADA_OFFLINE`` set to 1/true/yes (as ``HF_HUB_OFFLINE``)."""
    return os.environ.get("PLADA_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _problem(resp: httpx.Response) -> ServerResponseError:
    try:
        body = resp.json()
        code, detail = str(body.get("code", f"http_{resp.status_code}")), str(body.get("detail", ""))
    except (ValueError, AttributeError):
        code, detail = f"http_{resp.status_code}", resp.text[:200]
    return ServerResponseError(
        f"server answered {resp.status_code} {code}: {detail}", http_status=resp.status_code, problem_code=code
    )
