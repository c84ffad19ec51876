"""One conversation with a plada server over HTTP, every byte treated as hostile: retries with back-off
inside one deadline per call, bodies read raw under a cap, problem+json turned into one readable error, and
server JSON checked against its model before anyone uses it. ``PladaClient`` builds the API on top of it.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Self, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from plada.client.net import JSON_MAX_BYTES, call_deadline, deadline_transport
from plada.shared.cli import safe_text
from plada.shared.errors import (
    ClientError,
    OfflineError,
    ServerResponseError,
    ServerUnavailableError,
    VerificationError,
)
from plada.shared.schemas import TASK_NAME_PATTERN

M = TypeVar("M", bound=BaseModel)

DEFAULT_TIMEOUT = 30.0  # seconds per socket operation (connect, each read, each write)
DEFAULT_DEADLINE = 300.0  # seconds for a whole call, retries included: a trickling server cannot stall it
DEFAULT_RETRIES = 3
_RETRY_STATUS = {429, 502, 503, 504}
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


def model(cls: type[M], obj: Any, what: str) -> M:
    """Server JSON → model; a wrong shape or type is one readable line, not a pydantic traceback."""
    try:
        return cls.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or what
        raise ServerResponseError(f"server sent an invalid {what}: {loc}: {safe_text(first['msg'], 200)}") from None


def data_list(obj: Any, what: str) -> list[Any]:
    data = obj.get("data") if isinstance(obj, dict) else None
    if not isinstance(data, list):
        raise ServerResponseError(f"server sent an invalid {what} list (no 'data' array)")
    return data


def check_server_url(url: str) -> str:
    """A server's base URL, with a scheme: ``127.0.0.1:8000`` alone would be read as a scheme named 127.0.0.1."""
    url = url.strip().rstrip("/")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in ("http", "https"):
        raise ClientError(f"--server {safe_text(url, 100)!r} has no http:// or https:// in front: use http://{url}")
    return url


def origin(url: str) -> tuple[str, str, int | None]:
    u = httpx.URL(url)
    return (u.scheme, u.host, u.port or {"http": 80, "https": 443}.get(u.scheme))


def check_blob_base(url: str) -> str:
    """A blob base URL is an http(s) URL without query or fragment; a bad one is a configuration error."""
    try:
        u = httpx.URL(url)
    except httpx.InvalidURL:
        u = None
    if u is None or u.scheme not in ("http", "https") or not u.host or u.query or u.fragment:
        raise ClientError(f"PLADA_BLOB_BASE_URL must be an http(s) URL without query or fragment, not {url!r}")
    return url.rstrip("/")


def version_number(version: int | str) -> int:
    try:
        n = int(version)
    except ValueError:
        raise VerificationError(f"version must be a number or 'latest', not {safe_text(repr(version), 40)}") from None
    if n < 1:
        raise VerificationError(f"version must be >= 1, not {n}")
    return n


def problem(resp: Answer) -> ServerResponseError:
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


class ApiSession:
    """Base URL, token, timeouts and the request loop: what every call to the server shares."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        transport: httpx.BaseTransport | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        deadline: float = DEFAULT_DEADLINE,
        retries: int = DEFAULT_RETRIES,
        offline: bool = False,
    ) -> None:
        # identity: a server that compresses anyway is refused (a small body must not inflate in memory)
        headers = {"User-Agent": "plada-client", "Accept-Encoding": "identity"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.base_url = check_server_url(base_url) if base_url else ""
        self.retries, self.deadline, self.timeout = retries, deadline, timeout
        self.offline = offline
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

    def __enter__(self) -> Self:
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
                    raise problem(answer)
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
        # plada speaks bearer tokens, never cookies: a cookie some answer set (httpx keeps a jar and matches
        # hosts without ports) must not travel to a blob host on the same host, nor anywhere else
        request.headers.pop("Cookie", None)
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
