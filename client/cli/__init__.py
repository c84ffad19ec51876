"""``plada-client``: pull, verify, inspect and train from payloads; run the agent; publish tasks.

Thin: parse, call the library, print. A ``PladaError`` becomes one stderr line and exit status 1; nothing
half-written is left behind (every output file is written atomically).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from plada.client.cli import commands
from plada.client.cli.commands import read_spec
from plada.client.cli.hints import hint_text
from plada.client.cli.parser import build_parser
from plada.shared.cli import run_command

__all__ = ["build_parser", "main", "read_spec"]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands.OUT.json = bool(args.json)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return run_command("plada-client", lambda: args.fn(args), hint=lambda exc: hint_text(exc, args))


if __name__ == "__main__":
    sys.exit(main())
