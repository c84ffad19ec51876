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
import re
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
from pydantic import BaseModel, ValidationError

from plada.client.cache import PayloadCache
from plada.client.net import JSON_MAX_BYTES, call_deadline, deadline_transport, safe_text
from plada.shared.errors import (
    ClientError,
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
from plada.shared.schemas import (
    TASK_NAME_PATTERN,
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

M = TypeVar("M", bound=BaseModel)

log = logging.getLogger("plada.client")
DEFAULT_TIMEOUT = 30.0  # seconds per socket operation (connect, each read, each write)
DEFAULT_DEADLINE = 300.0  # seconds for a whole call, retries included: a trickling server cannot stall it
DEFAULT_RETRIES = 3
_RETRY_STATUS = {429, 502, 503, 504}
_REDIRECTS = {301, 302, 303, 307, 308}
MAX_REDIRECTS = 3  # a payload answer to a CDN, which may hop once or twice more (a bucket's region)
PAYLOAD_MAX_BYTES = MAX_HEADER_BYTES + MAX_BODY_BYTES + 4096  # the format's own maximum (framing included)
_TASK_NAME = re.compile(TASK_NAME_PATTERN)


@dataclass(frozen=True)
class Answer:
    """A response read in full under a size cap (what ``_request`` returns instead of a live httpx response)."""

    status_code: int
    headers: httpx.Headers
    content: bytes
    url: str

    def json(self) -> Any:
        try:
            return json.loads(self.content)
        except (ValueError, RecursionError) as exc:
            raise ServerResponseError(f"server sent malformed JSON for {self.url}") from exc


def check_task_name(name: str) -> str:
    """A task name is also a URL segment and a cache file name: anything but the server's own pattern (no
    '/', '..', absolute paths or control characters) is refused before it reaches either."""
    if not isinstance(name, str) or not _TASK_NAME.match(name):
        raise VerificationError(f"{safe_text(repr(name), 80)} is not a valid task name (lowercase a-z 0-9 . _ -)")
    return name


def _model(cls: type[M], obj: Any, what: str) -> M:
    """Server JSON → model; a wrong shape or type is one readable line, not a pydantic traceback."""
    try:
        return cls.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or what
        raise ServerResponseError(f"server sent an invalid {what}: {loc}: {safe_text(first['msg'], 200)}") from None


def _list(obj: Any, what: str) -> list[Any]:
    data = obj.get("data") if isinstance(obj, dict) else None
    if not isinstance(data, list):
        raise ServerResponseError(f"server sent an invalid {what} list (no 'data' array)")
    return data


@dataclass(frozen=True)
class Download:
    """A payload download; ``data`` is None when the server answered 304 Not Modified."""

    data: bytes | None
    sha256: str
    version: int
    signature: str | None = None  # the server's X-Plada-Signature


class PladaClient:
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
        # identity: a server that compresses anyway is refused (a small body must not inflate in memory)
        headers = {"User-Agent": "plada-client", "Accept-Encoding": "identity"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.base_url = base_url.rstrip("/")
        self.retries, self.deadline, self.timeout = retries, deadline, timeout
        self.cache = PayloadCache(Path(cache_dir) if cache_dir is not None else None)
        self.offline = offline_mode() if offline is None else offline
        pinned = trust if trust is not None else os.environ.get("PLADA_TRUST") or None
        self.trust = PublicKey.parse(pinned) if isinstance(pinned, str) else pinned
        blob = blob_base_url if blob_base_url is not None else os.environ.get("PLADA_BLOB_BASE_URL", "")
        self.blob_base_url = _check_blob_base(blob) if blob else None
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            headers=headers,
            transport=transport if transport is not None else deadline_transport(),
            follow_redirects=False,
        )

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

    def _request(
        self,
        method: str,
        url: str,
        *,
        retry: bool = True,
        max_bytes: int = JSON_MAX_BYTES,
        credentials: bool = True,
        **kw: Any,
    ) -> Answer:
        """One call: retried on transport errors and 429/5xx, all within ``deadline`` seconds; the body read
        raw under ``max_bytes``; any status >= 400 raised as ``ServerResponseError``."""
        if self.offline:
            raise OfflineError(f"offline (PLADA_OFFLINE=1): not asking {self.base_url} for {method} {url}")
        attempts = self.retries + 1 if retry else 1
        with call_deadline(self.deadline) as at:
            for attempt in range(attempts):
                try:
                    answer = self._read(method, url, max_bytes, at, credentials, **kw)
                except httpx.TransportError as exc:
                    if time.monotonic() >= at:
                        raise ServerUnavailableError(
                            f"{self.base_url} gave no complete answer to {method} {url} within {self.deadline:.0f} s"
                        ) from exc
                    if attempt + 1 < attempts and self._pause(attempt, at):
                        continue
                    raise ServerUnavailableError(f"cannot reach {self.base_url}: {type(exc).__name__}") from exc
                if answer.status_code in _RETRY_STATUS and attempt + 1 < attempts and self._pause(attempt, at):
                    continue
                if answer.status_code >= 400:
                    raise _problem(answer)
                if not 200 <= answer.status_code < 400:
                    raise ServerResponseError(f"server answered {answer.status_code} to {method} {url}")
                return answer
        raise AssertionError("unreachable")

    @staticmethod
    def _pause(attempt: int, at: float) -> bool:
        """Back off before the next try, if the deadline leaves time for one."""
        wait = min(0.25 * 2**attempt, 4.0)
        if time.monotonic() + wait >= at:
            return False
        time.sleep(wait)
        return True

    def _read(self, method: str, url: str, max_bytes: int, at: float, credentials: bool, **kw: Any) -> Answer:
        request = self._http.build_request(method, url, **kw)
        if not credentials:  # another origin (a CDN) never sees this server's token
            request.headers.pop("Authorization", None)
        resp = self._http.send(request, stream=True)
        try:
            encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise ServerResponseError(
                    f"server sent a {safe_text(encoding, 40)}-encoded body though the client asked for none; refused"
                )
            declared = resp.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise ServerResponseError(
                    f"server announced {int(declared):,} bytes for {url}; the cap is {max_bytes:,}"
                )
            chunks, total = [], 0
            for chunk in resp.iter_bytes():  # no decoding happens: encoded bodies were refused above
                total += len(chunk)
                if total > max_bytes:
                    raise ServerResponseError(f"server sent more than {max_bytes:,} bytes for {url}; refused")
                if time.monotonic() >= at:
                    raise httpx.ReadTimeout("the call's deadline passed")
                chunks.append(chunk)
            return Answer(resp.status_code, resp.headers, b"".join(chunks), str(resp.url))
        finally:
            resp.close()

    def _json(self, url: str) -> Any:
        return self._request("GET", url).json()

    @staticmethod
    def _path(task: str) -> str:
        return "/v1/tasks/" + urllib.parse.quote(check_task_name(task), safe="")

    def health(self) -> dict[str, Any]:
        body = self._json("/healthz")
        if not isinstance(body, dict):
            raise ServerResponseError("server sent an invalid health answer")
        return body

    def pools(self) -> list[PoolInfo]:
        return [_model(PoolInfo, p, "pool") for p in _list(self._json("/v1/pools"), "pool")]

    def tasks(self) -> list[TaskInfo]:
        return [_model(TaskInfo, t, "task") for t in _list(self._json("/v1/tasks"), "task")]

    def task(self, name: str) -> TaskInfo:
        return _model(TaskInfo, self._json(self._path(name)), "task")

    def versions(self, task: str) -> list[VersionInfo]:
        rows = _list(self._json(f"{self._path(task)}/versions"), "version")
        return [_model(VersionInfo, v, "version") for v in rows]

    def version(self, task: str, version: int) -> VersionInfo:
        return _model(VersionInfo, self._json(f"{self._path(task)}/versions/{int(version)}"), "version")

    def pool_layout(self, pool: str, max_items: int = 1 << 31) -> tuple[np.ndarray, str]:
        """The server's coding-layout groups for ``pool`` (name or id) and their layout id."""
        resp = self._request(
            "GET", f"/v1/pools/{urllib.parse.quote(pool, safe='')}/layout", max_bytes=max_items * 8 + 4096
        )
        try:
            groups = np.load(io.BytesIO(resp.content), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise VerificationError(f"layout of pool {safe_text(pool, 80)} is not a readable .npy array") from exc
        if groups.ndim != 1 or not np.issubdtype(groups.dtype, np.integer):
            raise VerificationError(f"layout of pool {safe_text(pool, 80)} is not a 1-D integer array")
        return groups, resp.headers.get("X-Plada-Layout-Id", "")

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
        return _model(JobInfo, self._json(f"/v1/jobs/{int(job_id)}"), "job")

    def cancel_job(self, job_id: int) -> JobInfo:
        """Cancel a queued or running job (the task's owner or an admin); its pending version is cancelled."""
        return _model(JobInfo, self._request("DELETE", f"/v1/jobs/{int(job_id)}", retry=False).json(), "job")

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
        return _model(PublishResponse, resp.json(), "publish answer")

    def report(self, task: str, version: int, report: ReportIn | dict[str, Any]) -> ReportInfo:
        """Tell the publisher how a student trained on this version did (shown on the server's dashboard)."""
        body = report if isinstance(report, ReportIn) else ReportIn.model_validate(report)
        resp = self._request(
            "POST",
            f"{self._path(task)}/versions/{int(version)}/reports",
            retry=False,
            json=body.model_dump(mode="json"),
        )
        return _model(ReportInfo, resp.json(), "report")

    def reports(self, task: str, version: int, *, max_pages: int = 100) -> list[ReportInfo]:
        """Every report on a version, page by page (at most ``max_pages`` pages of 1,000)."""
        out: list[ReportInfo] = []
        url: str | None = f"{self._path(task)}/versions/{int(version)}/reports?limit=1000"
        for _ in range(max_pages):
            if url is None:
                break
            body = self._json(url)
            out += [_model(ReportInfo, r, "report") for r in _list(body, "report")]
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
        url = f"{base}/payload" if version == "latest" else f"{base}/versions/{_version_number(version)}/payload"
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
        if version != "latest" and ver != _version_number(version):
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
        return _origin(url) == _origin(self.base_url)

    def _under_blob_base(self, url: str) -> bool:
        if self.blob_base_url is None or _origin(url) != _origin(self.blob_base_url):
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
        if version != "latest" and payload.version != _version_number(version):
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


def _origin(url: str) -> tuple[str, str, int | None]:
    u = httpx.URL(url)
    return (u.scheme, u.host, u.port or {"http": 80, "https": 443}.get(u.scheme))


def _check_blob_base(url: str) -> str:
    """A blob base URL is an http(s) URL without query or fragment; a bad one is a configuration error."""
    try:
        u = httpx.URL(url)
    except httpx.InvalidURL:
        u = None
    if u is None or u.scheme not in ("http", "https") or not u.host or u.query or u.fragment:
        raise ClientError(f"PLADA_BLOB_BASE_URL must be an http(s) URL without query or fragment, not {url!r}")
    return url.rstrip("/")


def _version_number(version: int | str) -> int:
    try:
        n = int(version)
    except ValueError:
        raise VerificationError(f"version must be a number or 'latest', not {safe_text(repr(version), 40)}") from None
    if n < 1:
        raise VerificationError(f"version must be >= 1, not {n}")
    return n


def resolve_layout(header: dict[str, Any], pool: Pool, cache: PayloadCache | None) -> PoolLayout | None:
    """The layout a payload header names, from the pool itself or the client cache; None if neither has it
    (or the payload names none: then the pool's own layout, as the decoder expects)."""
    wanted = header.get("codec", {}).get("layout")
    if wanted is None or (pool.layout is not None and pool.layout.layout_id == wanted):
        return pool.layout
    groups = cache.layout(pool.pool_id, str(wanted)) if cache is not None else None
    if groups is None or len(groups) != len(pool):
        return None
    layout = PoolLayout.from_groups(groups)
    return layout if layout.layout_id == wanted else None


def offline_mode() -> bool:
    """``PLADA_OFFLINE`` set to 1/true/yes (as ``HF_HUB_OFFLINE``)."""
    return os.environ.get("PLADA_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _problem(resp: Answer) -> ServerResponseError:
    """The server's problem+json as an error whose text is safe to print (it came from the network)."""
    try:
        body = json.loads(resp.content)
        code, detail = str(body.get("code", f"http_{resp.status_code}")), str(body.get("detail", ""))
    except (ValueError, AttributeError, RecursionError):
        code, detail = f"http_{resp.status_code}", resp.content[:200].decode("utf-8", "replace")
    code = code if re.fullmatch(r"[a-z0-9_]{1,64}", code) else f"http_{resp.status_code}"
    return ServerResponseError(
        f"server answered {resp.status_code} {code}: {safe_text(detail, 500)}",
        http_status=resp.status_code,
        problem_code=code,
    )
