"""Bearer tokens for publishers (and, per task, readers), and a publish rate limit.

Tokens are created with ``plada-server token create --scope read|publish|admin``; the plain token is printed
once and only its sha256 is stored (tokens are 256-bit random, so a fast hash is enough: no guessing to slow
down). ``read`` may read token-gated tasks and post reports; ``publish`` may also publish new tasks and new
versions of tasks its **owner** owns; ``admin`` may publish to any task and change owners. A token's owner is
a team name given at creation (default: the token's name), so a team rotates tokens without losing its
tasks. With ``PLADA_AUTH=off`` (a local demo) every request is an admin. Errors: 401 ``unauthorized`` (no or
unknown token; ``WWW-Authenticate: Bearer``), 403 ``forbidden`` (scope too small, or another owner's task),
429 ``rate_limited`` (``Retry-After``).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from plada.server.db import TokenRow, now
from plada.shared.errors import ForbiddenError, RateLimitedError, UnauthorizedError

SCOPES = ("read", "publish", "admin")
_RANK = {"read": 1, "publish": 2, "admin": 3}
OWNER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$"
PREFIX = "plada_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_owner(owner: str) -> str:
    if not re.match(OWNER_PATTERN, owner):
        raise ValueError("an owner is 1-128 letters, digits and . _ @ - (starting with a letter or digit)")
    return owner


def create_token(*, session: Session, name: str, scope: str, owner: str | None = None) -> tuple[TokenRow, str]:
    """A new token; returns (row, the plain token — shown once, never stored)."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}")
    plain = PREFIX + secrets.token_urlsafe(32)
    if owner is None:  # the owner defaults to the name only when the name is one as it is: never rewritten
        if not re.match(OWNER_PATTERN, name):
            raise ValueError(
                f"the name {name[:60]!r} is not an owner name (1-128 letters, digits and . _ @ -): give --owner "
                "(the team whose tasks this token may publish)"
            )
        owner = name
    owner = check_owner(owner)
    row = TokenRow(name=name[:128], scope=scope, token_hash=hash_token(plain), owner=owner)
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
    owner: str | None = None  # the team this caller publishes for
    name: str = "anonymous"  # for the task history: who did it

    @property
    def actor(self) -> str:
        return self.name if self.token_id is None else f"token {self.token_id} ({self.name}, owner {self.owner})"

    @property
    def is_admin(self) -> bool:
        return self.scope == "admin"


LOCAL = Caller(None, "admin", owner="local", name="local (auth off)")
ANONYMOUS = Caller(None, None)  # the dashboard and version pages: no token, ever


def sees_all_tasks(caller: Caller) -> bool:
    """Whether token-gated tasks exist for this caller: any valid token does (any scope), nobody else."""
    return caller.scope is not None


def may_see(access: str, caller: Caller) -> bool:
    """The one visibility rule. A public task is seen by anyone; a token-gated task (its versions, payloads,
    jobs, reports, pages and thumbnails) only by a caller holding a token. To anyone else it does not exist:
    404, never 403, so a gated task's name does not leak."""
    return access == "public" or sees_all_tasks(caller)


def authenticate(*, session: Session, authorization: str | None, enabled: bool) -> Caller:
    """The caller behind an ``Authorization`` header; an unknown or revoked token is an error, not anonymous."""
    if not enabled:
        return LOCAL
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
    return Caller(row.id, row.scope, owner=row.owner or row.name, name=row.name)


def require(caller: Caller, scope: str, what: str) -> None:
    if caller.scope is None:
        raise UnauthorizedError(f"{what} needs a bearer token (plada-server token create --scope {scope})")
    if _RANK[caller.scope] < _RANK[scope]:
        raise ForbiddenError(f"{what} needs a '{scope}' token; this one is '{caller.scope}'")


def require_owner(caller: Caller, task_name: str, task_owner: str | None, what: str) -> None:
    """Only the task's owner (or an admin) may change it: publish a version, change access or owner."""
    require(caller, "publish", what)
    if caller.is_admin or (task_owner is not None and caller.owner == task_owner):
        return
    if task_owner is None:
        raise ForbiddenError(
            f"task {task_name!r} predates task ownership: only an admin token may {what} it "
            "(an admin gives it an owner with 'plada-server task chown')"
        )
    raise ForbiddenError(f"task {task_name!r} belongs to another owner; {what} needs its owner's token")


class RateLimiter:
    """At most ``limit`` events per ``window_s`` per key (sliding window, this process only)."""

    def __init__(self, limit: int, window_s: float = 60.0, what: str = "publishes") -> None:
        self.limit, self.window_s, self.what = limit, window_s, what
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
                    f"more than {self.limit} {self.what} in {self.window_s:.0f} s; retry in {retry} s",
                    retry_after=retry,
                )
            q.append(t)
