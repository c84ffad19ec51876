"""What both command lines share: output (``--json`` or readable), progress bars, and the one-line error.

``plada-server`` and ``plada-client`` look and fail alike: a result is JSON with ``--json`` (for scripts) and
``key: value`` lines or a table otherwise; progress goes to stderr, only on a terminal; an error is one line
``PROG: error: CODE: message`` and exit status 1 (2 for usage, 130 when interrupted), never a traceback
(``PLADA_DEBUG=1`` shows one). Text that may come from a server is neutralised before it is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from plada.shared.errors import PladaError

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")


def safe_text(text: object, limit: int = 2000) -> str:
    """Text from the network made safe to print: control characters and terminal escapes neutralised."""
    s = str(text)
    if len(s) > limit:
        s = s[:limit] + "…"
    return _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), s)


class Output:
    """Where a command's result goes: stdout, as JSON (``--json``) or readable."""

    def __init__(self, as_json: bool = False) -> None:
        self.json = as_json

    def emit(self, obj: Any) -> None:
        """JSON with ``--json``, else ``key: value`` lines (a dict) or a table (a list of dicts)."""
        if self.json:
            print(json.dumps(obj, indent=2, default=str))
            return
        obj = readable_times(obj)
        if isinstance(obj, list):
            if not obj:
                print("(none)")
                return
            cols = list(obj[0])
            cells = [[cell(r.get(c)) for c in cols] for r in obj]
            widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
            print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip())
            for row in cells:
                print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
            return
        for k, v in obj.items():
            print(f"{safe_text(k)}: {cell(v)}")


def readable_times(obj: Any) -> Any:
    """Human output shows times as ISO 8601 (UTC): values of keys named ``at`` or ``*_at`` that are epoch
    seconds (``--json`` keeps the numbers)."""
    from datetime import UTC, datetime

    if isinstance(obj, list):
        return [readable_times(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    out = {}
    for k, v in obj.items():
        if (k == "at" or str(k).endswith("_at")) and isinstance(v, int | float) and not isinstance(v, bool) and v > 0:
            v = datetime.fromtimestamp(float(v), UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        out[k] = readable_times(v)
    return out


def cell(v: Any) -> str:
    """One value made printable: much of what is shown (task names, messages, metrics) came from a server."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict | list):
        return safe_text(json.dumps(v, default=str))
    return safe_text(v)


def progress_bar(desc: str, unit: str = "") -> Callable[[float, str], None]:
    """A progress callback (fraction done, message) drawn on stderr when it is a terminal; silent when piped,
    so a script's stderr keeps to one line per error."""
    from tqdm import tqdm

    bar = tqdm(
        total=1000,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        leave=False,
        bar_format="{l_bar}{bar}|",
        disable=not sys.stderr.isatty(),
    )

    def update(frac: float, msg: str) -> None:
        bar.n = int(1000 * min(max(frac, 0.0), 1.0))
        # the message goes into the format itself: tqdm's postfix field always starts with ", "
        bar.bar_format = "{l_bar}{bar}| " + msg.replace("{", "{{").replace("}", "}}")
        bar.refresh()
        if frac >= 1.0:
            bar.close()

    return update


def stage_progress(desc: str, stream: Any = None) -> Callable[[float, str], None]:
    """A progress callback that reads well in a log: a bar on a terminal, and off one (piped, CI) one line per
    stage, where the stage is the message up to its first digit ("teacher: epoch 3/8" → "teacher: epoch"),
    instead of a bar redrawn with carriage returns into one enormous line."""
    out = stream if stream is not None else sys.stderr
    if out.isatty():
        return progress_bar(desc)
    last = [""]

    def update(frac: float, msg: str) -> None:
        stage = re.split(r"\d", msg, maxsplit=1)[0].rstrip(" :,(/-") or "working"
        if stage != last[0]:
            last[0] = stage
            print(f"{desc}: {stage} ({100 * min(max(frac, 0.0), 1.0):.0f} %)", file=out, flush=True)

    return update


def counting_bar(desc: str) -> Callable[[int, int], None]:
    """``progress_bar`` for callbacks that count (done, total), e.g. images of a pool."""
    bar = progress_bar(desc)
    return lambda done, total: bar(done / max(total, 1), f"{done:,}/{total:,}")


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    """``--json`` on the command and on every subcommand (so it works before or after the subcommand name;
    SUPPRESS keeps a subcommand's default from undoing a leading ``--json``)."""
    parser.add_argument("--json", action="store_true", help="machine-readable JSON on stdout (for scripts)")

    def walk(p: argparse.ArgumentParser) -> None:
        for action in p._actions:  # argparse has no public accessor for sub-parsers
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    sub.add_argument(
                        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable JSON"
                    )
                    walk(sub)

    walk(parser)


def run_command(
    prog: str,
    fn: Callable[[], int],
    *,
    explain: Callable[[Exception], str | None] | None = None,
    hint: Callable[[Exception], str | None] | None = None,
) -> int:
    """Run one command: its exit status, or one stderr line and 1 for any error (130 when interrupted).
    ``explain`` turns a library's own exception (e.g. a settings error) into that line's text; ``hint`` gives
    the next step, appended to the same line after "; "."""
    try:
        return int(fn())
    except PladaError as exc:
        step = hint(exc) if hint else None
        tail = f"; {safe_text(step, 300)}" if step else ""
        print(f"{prog}: error: {exc.code}: {safe_text(exc.message)}{tail}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # never a traceback (PLADA_DEBUG=1 shows one): one line, exit status 1
        if os.environ.get("PLADA_DEBUG"):
            raise
        text = explain(exc) if explain else None
        print(f"{prog}: error: {safe_text(text or f'{type(exc).__name__}: {exc}', 500)}", file=sys.stderr)
        return 1
