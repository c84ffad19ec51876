"""``plada-server``: serve the API, run a worker, build and register pools.

Thin: parse arguments, build Settings (flags override ``PLADA_*`` variables), call the library, print the
result (``--json`` for scripts, readable otherwise, like ``plada-client``) and turn any error into one stderr
line and exit status 1 (``plada.shared.cli``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from plada.server.cli import commands
from plada.server.cli.parser import SUB_EXAMPLES, build_parser
from plada.shared.cli import run_command

__all__ = ["SUB_EXAMPLES", "build_parser", "main"]


def _explain(exc: Exception) -> str | None:
    """A bad ``PLADA_*`` value or flag is a settings error: name the setting, not pydantic's traceback."""
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        return f"invalid setting {'.'.join(map(str, first['loc']))}: {first['msg']}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from plada.server.logs import configure

    commands.OUT.json = bool(args.json)
    configure("json" if os.environ.get("PLADA_LOG_FORMAT", "").strip().lower() == "json" else "text")
    return run_command("plada-server", lambda: args.fn(args), explain=_explain)


if __name__ == "__main__":
    sys.exit(main())
