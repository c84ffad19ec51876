"""Generate the parts of the docs that must match the code: the HTTP route table (from the OpenAPI schema)
and the CLI reference (from ``--help``). ``make docs`` rewrites them; ``--check`` (and a test) fails on drift.

    python scripts/gendocs.py [--check]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- BEGIN GENERATED: routes -->", "<!-- END GENERATED: routes -->"
HELP_COLUMNS = "100"


def _schema_name(content: dict[str, Any]) -> str:
    for media, body in content.items():
        ref = body.get("schema", {}).get("$ref", "")
        if ref:
            return f"`{ref.rsplit('/', 1)[-1]}`"
        if media != "application/json":
            return f"`{media}`"
    return ""


def routes_table() -> str:
    from plada.server.app import create_app
    from plada.server.settings import Settings

    spec = create_app(Settings(database_url="sqlite://")).openapi()
    lines = ["| method | path | what | request | responses |", "|---|---|---|---|---|"]
    for path in sorted(spec["paths"]):
        for method, op in sorted(spec["paths"][path].items()):
            req = _schema_name(op.get("requestBody", {}).get("content", {}))
            params = [p["name"] for p in op.get("parameters", []) if p["in"] == "query"]
            if params:
                req = (req + " " if req else "") + "query: " + ", ".join(f"`{p}`" for p in params)
            resp = "; ".join(
                f"{code} {_schema_name(r.get('content', {}))}".strip()
                for code, r in sorted(op.get("responses", {}).items())
                if code != "422"
            )
            lines.append(f"| {method.upper()} | `{path}` | {op.get('summary', '')} | {req} | {resp} |")
    return "\n".join(lines)


def http_api_md(current: str) -> str:
    """``current`` with the text between the route markers replaced by the generated table."""
    head, _, rest = current.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{routes_table()}\n{END}{tail}"


def _help_of(parser: argparse.ArgumentParser) -> str:
    buf = io.StringIO()
    with redirect_stdout(buf):
        parser.print_help()
    return buf.getvalue().rstrip()


def _walk(parser: argparse.ArgumentParser, prefix: str) -> list[tuple[str, str]]:
    out = [(prefix, _help_of(parser))]
    for action in parser._actions:  # argparse keeps sub-parsers here; there is no public accessor
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.extend(_walk(sub, f"{prefix} {name}"))
    return out


def cli_md() -> str:
    from plada.client.cli import build_parser as client_parser
    from plada.server.cli import build_parser as server_parser

    os.environ["COLUMNS"] = HELP_COLUMNS  # argparse wraps to the terminal: pin it so the text is stable
    parts = [
        "# Command-line reference",
        "",
        "Generated from `--help` by `python scripts/gendocs.py` (`make docs`); a test fails when it drifts.",
        "",
        "Exit status of both commands: **0** success; **1** an error, reported as one line on stderr",
        "(`plada-client: error: CODE: message`, CODE from `docs/http-api.md`), nothing half-written left behind;",
        "**2** a usage error (argparse); **130** interrupted (Ctrl-C). Every command takes `--json` for",
        "machine-readable output; long steps show progress bars on a terminal (never when stderr is piped).",
        "",
    ]
    for prog, parser in (("plada-server", server_parser()), ("plada-client", client_parser())):
        for name, text in _walk(parser, prog):
            parts += [f"## `{name}`", "", "```text", text, "```", ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 if a generated doc is out of date")
    args = ap.parse_args(argv)
    targets = {
        REPO / "docs" / "http-api.md": lambda cur: http_api_md(cur),
        REPO / "docs" / "cli.md": lambda _cur: cli_md(),
    }
    stale = []
    for path, make in targets.items():
        cur = path.read_text() if path.exists() else ""
        new = make(cur)
        if new != cur:
            stale.append(path)
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        print(f"out of date: {', '.join(str(p.relative_to(REPO)) for p in stale)}; run make docs", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
