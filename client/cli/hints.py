"""The next step after an error: what a newcomer should run or change, appended to the one-line message.

Hints come from what the command was given (the server URL, the files) and never from guesses about a
server's secrets: an unknown task is matched only against the tasks this caller's token can list.
"""

from __future__ import annotations

import argparse
import difflib
from typing import Any

from plada.shared.errors import PladaError

TOKEN_HINT = (
    "check the token with 'plada-server token list' on the server, or create one with "
    "'plada-server token create --scope publish --owner TEAM'"
)


def code_of(exc: PladaError) -> str:
    """The code a user sees: a server's problem code, else the client's own."""
    return str(getattr(exc, "problem_code", None) or exc.code)


def next_step(exc: PladaError, args: argparse.Namespace) -> str | None:
    code = code_of(exc)
    server = getattr(args, "server", None) or "URL"
    if code == "unauthorized":
        return TOKEN_HINT
    if code == "task_not_found" and getattr(args, "server", None):
        return _closest_task(args)
    if code == "server_unavailable":
        return f"is 'plada-server serve' running at {server}?"
    if code == "signature_invalid":
        return (
            f"the server's key is printed by 'plada-server key show' on the server and served at "
            f"{server}/v1/signing-key; pin that one with --trust or PLADA_TRUST"
        )
    if code == "payload_needs_pool":
        return "add --pool DIR, the pool the payload was made for (e.g. ~/.cache/plada/world/pools/mini-v1)"
    return None


def _closest_task(args: argparse.Namespace) -> str:
    """The caller's visible tasks closest to the name asked for (best effort: a short call of its own)."""
    from plada.client.api import PladaClient

    asked = str(getattr(args, "task", "") or "")
    listing = f"'plada-client tasks --server {args.server}' lists them"
    try:
        with PladaClient(args.server, token=getattr(args, "token", None), deadline=10.0, retries=0) as c:
            names = [t.name for t in c.tasks()]
    except PladaError:
        return listing
    close = difflib.get_close_matches(asked, names, n=3, cutoff=0.6)
    if close:
        return f"did you mean {' or '.join(repr(n) for n in close)}? ({listing})"
    return listing


def hint_text(exc: Exception, args: Any) -> str | None:
    if not isinstance(exc, PladaError):
        return None
    try:
        return next_step(exc, args)
    except Exception:  # a hint must never hide the error it explains
        return None
