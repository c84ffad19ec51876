"""``PladaClient``: the HTTP client. Every httpx failure becomes a ``ClientError`` subclass.

Payloads are verified before they are returned: the bytes hash to the server's ETag, the container's own
checksum holds, and (when a pool is given) the payload's pool_id is the local pool's.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from plada.client.cache import PayloadCache, offline_mode, resolve_layout
from plada.client.definitions import (
    DefinitionCache,
    LoadedDefinition,
    cached_definition,
    check_pool_name,
    definition_headers,
    verify_definition,
)
from plada.client.session import (
    DEFAULT_DEADLINE,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    Answer,
    ApiSession,
    check_blob_base,
    check_task_name,
    data_list,
    model,
    origin,
    version_number,
)
from plada.shared.cli import safe_text
from plada.shared.errors import (
    OfflineError,
    PipelineError,
    ServerResponseError,
    ServerUnavailableError,
    VerificationError,
)
from plada.shared.payload import (
    MAX_BODY_BYTES,
    MAX_HEADER_BYTES,
    Payload,
    check_pool,
    decode_payload,
    payload_sha256,
    read_header,
)
from plada.shared.pool import Pool, PoolLayout
from plada.shared.pool.definition import MAX_DEFINITION_BYTES
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
_REDIRECTS = {301, 302, 303, 307, 308}
MAX_REDIRECTS = 3  # a payload answer to a CDN, which may hop once or twice more (a bucket's region)
PAYLOAD_MAX_BYTES = MAX_HEADER_BYTES + MAX_BODY_BYTES + 4096  # the format's own maximum (framing included)


@dataclass(frozen=True)
class Download:
    """A payload download; ``data`` is None when the server answered 304 Not Modified."""

    data: bytes | None
    sha256: str
    version: int
    signature: str | None = None  # the server's X-Plada-Signature


def read_layout_npy(data: bytes, max_items: int, *, what: str) -> np.ndarray:
    """A server's layout as a 1-D integer ``.npy`` of at most ``max_items``: the header is read and checked
    before any array is allocated (a header may claim terabytes), and an ``.npz`` or anything else is refused
    with one line."""
    buf = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buf)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _fortran, dtype = read(buf, max_header_size=10_000)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as exc:
        raise VerificationError(f"{what} is not a readable .npy array") from exc
    if len(shape) != 1 or not np.issubdtype(dtype, np.integer) or not 0 < shape[0] <= max_items:
        raise VerificationError(f"{what} is not a 1-D integer array of at most {max_items:,} items")
    try:
        groups = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise VerificationError(f"{what} is not a readable .npy array") from exc
    if not isinstance(groups, np.ndarray) or groups.shape != shape:
        raise VerificationError(f"{what} is not a 1-D integer array")
    return groups


class PladaClient(ApiSession):
    """The HTTP API as Python: list tasks and versions, fetch verified payloads through a local cache, publish.

    ``cache_dir`` defaults to ``$PLADA_CACHE`` or ``$XDG_CACHE_HOME/plada`` (``~/.cache/plada``). With
    ``offline=True`` (default: ``PLADA_OFFLINE=1`` in the environment) nothing touches the network: ``fetch``
    answers from the cache or raises ``OfflineError``.

    A payload answer may redirect (``PLADA_BLOB_BASE_URL`` on the server): the client follows it only to this
    server's own origin or under ``blob_base_url`` (default ``$PLADA_BLOB_BASE_URL``), sends its token only to
    this server, and verifies the bytes against the ETag, version and signature the API itself sent.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        cache_dir: str | Path | None = None,
        transport: httpx.BaseTransport | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        deadline: float = DEFAULT_DEADLINE,
        retries: int = DEFAULT_RETRIES,
        offline: bool | None = None,
        trust: str | PublicKey | None = None,
        blob_base_url: str | None = None,
    ) -> None:
        super().__init__(
            base_url,
            token,
            transport,
            timeout=timeout,
            deadline=deadline,
            retries=retries,
            offline=offline_mode() if offline is None else offline,
        )
        self.cache = PayloadCache(Path(cache_dir) if cache_dir is not None else None)
        pinned = trust if trust is not None else os.environ.get("PLADA_TRUST") or None
        self.trust = PublicKey.parse(pinned) if isinstance(pinned, str) else pinned
        blob = blob_base_url if blob_base_url is not None else os.environ.get("PLADA_BLOB_BASE_URL", "")
        self.blob_base_url = check_blob_base(blob) if blob else None

    def health(self) -> dict[str, Any]:
        body = self._json("/healthz")
        if not isinstance(body, dict):
            raise ServerResponseError("server sent an invalid health answer")
        return body

    def pools(self) -> list[PoolInfo]:
        return [model(PoolInfo, p, "pool") for p in data_list(self._json("/v1/pools"), "pool")]

    def tasks(self) -> list[TaskInfo]:
        return [model(TaskInfo, t, "task") for t in data_list(self._json("/v1/tasks"), "task")]

    def task(self, name: str) -> TaskInfo:
        return model(TaskInfo, self._json(self._path(name)), "task")

    def versions(self, task: str) -> list[VersionInfo]:
        rows = data_list(self._json(f"{self._path(task)}/versions"), "version")
        return [model(VersionInfo, v, "version") for v in rows]

    def version(self, task: str, version: int) -> VersionInfo:
        return model(VersionInfo, self._json(f"{self._path(task)}/versions/{int(version)}"), "version")

    def pool_layout(self, pool: str, max_items: int = 1 << 31) -> tuple[np.ndarray, str]:
        """The server's coding-layout groups for ``pool`` (name or id) and their layout id."""
        resp = self._request(
            "GET", f"/v1/pools/{urllib.parse.quote(pool, safe='')}/layout", max_bytes=max_items * 8 + 4096
        )
        groups = read_layout_npy(resp.content, max_items, what=f"layout of pool {safe_text(pool, 80)}")
        return groups, resp.headers.get("X-Plada-Layout-Id", "")

    def pool_definition(self, pool: str) -> LoadedDefinition:
        """The server's definition of ``pool`` (what ``pool attach`` maps a local copy onto): conditional on the
        cached copy (a 304 costs no body), verified (caps before allocation, pool id, the pinned key's
        signature) and cached; offline, the cached one."""
        name = check_pool_name(pool)
        store = DefinitionCache(self.cache.root)
        if self.offline:
            return cached_definition(store, self.server_key, name, self.trust)
        resp = self._request(
            "GET",
            f"/v1/pools/{urllib.parse.quote(name, safe='')}/definition",
            headers=definition_headers(store, self.server_key, name),
            max_bytes=MAX_DEFINITION_BYTES,
        )
        if resp.status_code == 304:
            return cached_definition(store, self.server_key, name, self.trust)
        loaded = verify_definition(
            resp.content, resp.headers.get("X-Plada-Signature"), trust=self.trust, source=self.base_url
        )
        store.put(self.server_key, name, resp.content, loaded.signature)
        return loaded

    def ensure_layout(self, header: dict[str, Any], pool: Pool) -> PoolLayout | None:
        """The coding layout a payload needs: the pool's own, or one kept in the cache. A layout the client
        lacks is fetched once, checked (one group per pool item, hashing to the layout id the payload names) and
        kept in the cache: the pool's files are never rewritten on a server's word."""
        wanted = header.get("codec", {}).get("layout")
        found = resolve_layout(header, pool, self.cache)
        if found is not None or wanted is None:
            return found
        groups, layout_id = self.pool_layout(header["pool_id"], max_items=len(pool))
        if layout_id != wanted or len(groups) != len(pool) or PoolLayout.from_groups(groups).layout_id != wanted:
            raise VerificationError(f"the server's layout for pool {pool.name} does not match the payload's")
        self.cache.put_layout(pool.pool_id, wanted, groups)
        return resolve_layout(header, pool, self.cache)

    def job(self, job_id: int) -> JobInfo:
        return model(JobInfo, self._json(f"/v1/jobs/{int(job_id)}"), "job")

    def cancel_job(self, job_id: int) -> JobInfo:
        """Cancel a queued or running job (the task's owner or an admin); its pending version is cancelled."""
        return model(JobInfo, self._request("DELETE", f"/v1/jobs/{int(job_id)}", retry=False).json(), "job")

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
        return model(PublishResponse, resp.json(), "publish answer")

    def report(self, task: str, version: int, report: ReportIn | dict[str, Any]) -> ReportInfo:
        """Tell the publisher how a student trained on this version did (shown on the server's dashboard)."""
        body = report if isinstance(report, ReportIn) else ReportIn.model_validate(report)
        resp = self._request(
            "POST",
            f"{self._path(task)}/versions/{int(version)}/reports",
            retry=False,
            json=body.model_dump(mode="json"),
        )
        return model(ReportInfo, resp.json(), "report")

    def reports(self, task: str, version: int, *, max_pages: int = 100) -> list[ReportInfo]:
        """Every report on a version, page by page (at most ``max_pages`` pages of 1,000)."""
        out: list[ReportInfo] = []
        url: str | None = f"{self._path(task)}/versions/{int(version)}/reports?limit=1000"
        for _ in range(max_pages):
            if url is None:
                break
            body = self._json(url)
            out += [model(ReportInfo, r, "report") for r in data_list(body, "report")]
            nxt = body.get("next")
            url = nxt if isinstance(nxt, str) and nxt.startswith(self._path(task) + "/") else None
        return out

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
            if info.state == "cancelled":
                raise PipelineError(f"job {job_id} was cancelled")
            if info.state == "failed":
                err = info.error
                raise PipelineError(
                    f"job {job_id} failed: {err.code}: {err.message}" if err else f"job {job_id} failed"
                )
            if time.monotonic() > deadline:
                raise ServerUnavailableError(f"job {job_id} did not finish within {timeout:.0f} s")
            time.sleep(poll)

    def download(
        self, task: str, version: int | str = "latest", *, etag: str | None = None, wait: float = 0.0
    ) -> Download:
        """One payload download. ``wait`` > 0 (latest, with ``etag``): long-poll — the server holds its 304 up
        to that many seconds (at most 60) until a new version is ready."""
        base = self._path(task)
        url = f"{base}/payload" if version == "latest" else f"{base}/versions/{version_number(version)}/payload"
        headers = {"If-None-Match": f'"{etag}"'} if etag else {}
        kw: dict[str, Any] = {}
        if wait > 0 and version == "latest" and etag:
            wait = min(float(wait), 60.0)
            kw = {"params": {"wait": f"{wait:g}"}, "timeout": httpx.Timeout(self.timeout + wait)}
        resp = self._request("GET", url, headers=headers, max_bytes=PAYLOAD_MAX_BYTES, **kw)
        sha = resp.headers.get("ETag", "").strip().removeprefix("W/").strip('"')
        if not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise VerificationError(f"server sent no usable ETag for {task!r} (expected the payload's sha256)")
        try:
            ver = int(resp.headers.get("X-Plada-Version", ""))
        except ValueError:
            raise VerificationError(f"server sent no usable X-Plada-Version for {task!r}") from None
        if version != "latest" and ver != version_number(version):
            raise VerificationError(f"asked for version {version} of {task!r}, the server answered version {ver}")
        sig = resp.headers.get("X-Plada-Signature")
        if resp.status_code == 304:
            return Download(data=None, sha256=sha, version=ver, signature=sig)
        data = self._follow(resp, task) if resp.status_code in _REDIRECTS else resp.content
        if payload_sha256(data) != sha:
            raise VerificationError(
                f"downloaded payload of {task!r} does not hash to the server's ETag "
                f"(got {len(data)} bytes; transfer damaged?)"
            )
        return Download(data=data, sha256=sha, version=ver, signature=sig)

    def _follow(self, answer: Answer, task: str) -> bytes:
        """The bytes behind a payload redirect. Only this server's origin and the configured blob base URL are
        followed (a hostile server cannot point the client anywhere else), at most ``MAX_REDIRECTS`` hops; the
        caller checks the bytes against the ETag of the API's own answer, never the blob host's headers."""
        for _ in range(MAX_REDIRECTS):
            location = answer.headers.get("Location", "")
            if not location:
                raise ServerResponseError(f"server answered {answer.status_code} for {task!r} without a Location")
            target = urllib.parse.urljoin(answer.url, location)
            own = self._same_origin(target)
            if not own and not self._under_blob_base(target):
                where = "" if self.blob_base_url is None else f" or under {self.blob_base_url}"
                raise VerificationError(
                    f"server redirected the payload of {task!r} to {safe_text(target, 200)}, which is not "
                    f"{self.base_url}{where}; refused (set PLADA_BLOB_BASE_URL to follow a CDN)"
                )
            answer = self._request("GET", target, max_bytes=PAYLOAD_MAX_BYTES, credentials=own)
            if answer.status_code == 200:
                return answer.content
            if answer.status_code not in _REDIRECTS:
                raise ServerResponseError(f"the payload URL of {task!r} answered {answer.status_code}, not 200")
        raise ServerResponseError(f"more than {MAX_REDIRECTS} redirects for the payload of {task!r}; refused")

    def _same_origin(self, url: str) -> bool:
        return origin(url) == origin(self.base_url)

    def _under_blob_base(self, url: str) -> bool:
        if self.blob_base_url is None or origin(url) != origin(self.blob_base_url):
            return False
        path = httpx.URL(url).path
        base = httpx.URL(self.blob_base_url).path.rstrip("/") + "/"
        return path.startswith(base) and ".." not in path.split("/")

    def fetch(
        self, task: str, version: int | str = "latest", *, pool: Pool | None = None, wait: float = 0.0
    ) -> Payload:
        """A verified payload: from the cache when the server's ETag says it is current (or when offline),
        else downloaded, checked against ``pool`` (pool_id, coding layout) and cached. ``payload.sha256`` is
        its content address; the bytes are ``client.cache.get(payload.sha256)``."""
        check_task_name(task)
        if self.offline:
            ref = self.cache.find(task, version)
            data = self.cache.get(ref["sha256"]) if ref is not None else None
            if ref is None or data is None:
                raise OfflineError(
                    f"no cached payload for {task!r} version {version} in {self.cache.root} (offline: "
                    "PLADA_OFFLINE=1 or no server); pull it while online or 'plada-client import FILE'"
                )
            log.info("offline: using cached payload %s v%s (%s)", task, ref.get("version"), ref["sha256"][:12])
            self._check_signature(ref["sha256"], self.cache.signature(ref["sha256"]))
            return self._verify(task, data, ref["sha256"], pool)
        etag = None
        ref = self.cache.ref(self.server_key, f"{task}@{version}")
        if ref and self.cache.get(ref["sha256"]) is not None:
            etag = ref["sha256"]
        dl = self.download(task, version, etag=etag, wait=wait)
        data = dl.data if dl.data is not None else self.cache.get(dl.sha256)
        if data is None:  # the cache lost it in between: fetch without ETag
            dl = self.download(task, version)
            assert dl.data is not None
            data = dl.data
        signature = dl.signature or self.cache.signature(dl.sha256)
        self._check_signature(dl.sha256, signature)
        payload = self._verify(task, data, dl.sha256, pool)
        if payload.version != dl.version:
            raise VerificationError(
                f"server labelled a payload of {task!r} version {dl.version}, but the payload says {payload.version}"
            )
        if version != "latest" and payload.version != version_number(version):
            raise VerificationError(f"asked for version {version} of {task!r}, got a payload of {payload.version}")
        seen = self.cache.ref(self.server_key, f"{task}@latest")
        if version == "latest" and seen is not None and payload.version < int(seen.get("version", 0)):
            raise VerificationError(
                f"server offers version {payload.version} of {task!r} as the latest, but version "
                f"{seen.get('version')} was already seen from it: refused (rollback protection)"
            )
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
        layout = None
        if pool is not None:  # before decoding: a payload for another pool must say so, not fail to decode
            header = read_header(data)[0]
            check_pool(header, pool)
            layout = resolve_layout(header, pool, self.cache) if self.offline else self.ensure_layout(header, pool)
        payload = decode_payload(data, expected_sha256=sha, layout=layout)
        if payload.task != task:
            raise VerificationError(
                f"server sent a payload for task {safe_text(repr(payload.task), 80)}, asked for {task!r}"
            )
        return payload
