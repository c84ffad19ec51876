"""Bearer tokens for publishers (and, per task, readers), and a publish rate limit.

Tokens are created with ``plada-server token create --scope publish|read``; the plain token is printed once
and only its sha256 is stored (tokens are 256-bit random, so a fast hash is enough: no guessing to slow
down). ``publish`` may publish tasks and read everything; ``read`` may read token-gated tasks and post
reports. With ``PLADA_AUTH=off`` (a local demo) every request is allowed. Errors: 401 ``unauthorized``
(no or unknown token; ``WWW-Authenticate: Bearer``), 403 ``forbidden`` (scope too small), 429
``rate_limited`` (``Retry-After``).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from plada.server.db import TokenRow, now
from plada.shared.errors import ForbiddenError, RateLimitedError, UnauthorizedError

SCOPES = ("read", "publish")
_RANK = {"read": 1, "publish": 2}
PREFIX = "plada_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(*, session: Session, name: str, scope: str) -> tuple[TokenRow, str]:
    """A new token; returns (row, the plain token — shown once, never stored)."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}")
    plain = PREFIX + secrets.token_urlsafe(32)
    row = TokenRow(name=name[:128], scope=scope, token_hash=hash_token(plain))
    session.add(row)
    session.flush()
    return row, plain


def list_tokens(*, session: Session) -> list[TokenRow]:
    return list(session.scalars(select(TokenRow).order_by(TokenRow.id)))


def revoke_token(*, session: Session, token_id: int) -> bool:
    row = session.get(TokenRow, token_id)
    if row is None:
        return False
    row.revoked = True
    return True


@dataclass(frozen=True)
class Caller:
    token_id: int | None  # None: anonymous (or auth off)
    scope: str | None


def authenticate(*, session: Session, authorization: str | None, enabled: bool) -> Caller:
    """The caller behind an ``Authorization`` header; an unknown or revoked token is an error, not anonymous."""
    if not enabled:
        return Caller(None, "publish")
    if not authorization:
        return Caller(None, None)
    kind, _, token = authorization.partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        raise UnauthorizedError("the Authorization header must be 'Bearer <token>'")
    row = session.scalar(select(TokenRow).where(TokenRow.token_hash == hash_token(token.strip())))
    if row is None or row.revoked:
        raise UnauthorizedError("unknown or revoked token")
    row.last_used_at = now()
    session.commit()
    return Caller(row.id, row.scope)


def require(caller: Caller, scope: str, what: str) -> None:
    if caller.scope is None:
        raise UnauthorizedError(f"{what} needs a bearer token (plada-server token create --scope {scope})")
    if _RANK[caller.scope] < _RANK[scope]:
        raise ForbiddenError(f"{what} needs a '{scope}' token; this one is '{caller.scope}'")


class RateLimiter:
    """At most ``limit`` events per ``window_s`` per key (sliding window, this process only)."""

    def __init__(self, limit: int, window_s: float = 60.0) -> None:
        self.limit, self.window_s = limit, window_s
        self._events: dict[object, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: object) -> None:
        t = time.monotonic()
        with self._lock:
            q = self._events.setdefault(key, deque())
            while q and q[0] <= t - self.window_s:
                q.popleft()
            if len(q) >= self.limit:
                retry = max(1, int(q[0] + self.window_s - t) + 1)
                raise RateLimitedError(
                    f"more than {self.limit} publishes in {self.window_s:.0f} s; retry in {retry} s", retry_after=retry
                )
            q.append(t)
