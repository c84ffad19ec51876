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


ERRORS_MD = [
    "## Errors and what to do next",
    "",
    "Each error is one line, `plada-client: error: CODE: message`, and where there is one, the next step after",
    "`; ` (tests/e2e/test_newcomer_errors.py holds each of these):",
    "",
    "| mistake | what the line says |",
    "|---|---|",
    "| a wrong or revoked `--token` | `server_error: server answered 401 unauthorized: unknown or revoked token; check "
    "the token with 'plada-server token list' on the server, or create one with 'plada-server token create --scope "
    "publish --owner TEAM'` |",
    "| `--task fashon` | `server_error: server answered 404 task_not_found: no task named 'fashon'; did you mean "
    "'fashion'? ('plada-client tasks --server URL' lists them)` (only tasks your token can see are suggested) |",
    "| a class folder with one image | `server_error: server answered 422 invalid_data: every class needs at least 2 "
    "images (the server keeps some for validation); too few for 'dog/puppy' (1): add images to those class "
    "folders` |",
    "| a zip folder that is not a class | `… invalid_data: zip folder 'cow' is not one of the spec's classes ('cat', "
    "'dog/puppy'); name each folder as its class ('/' in a class name becomes '_' in its folder name)` |",
    "| `--pool` that does not exist | `pool_invalid: pool folder /x/missing does not exist` |",
    "| `--pool` naming the folder of pools | `pool_invalid: /x/world/pools is a folder of pools, not a pool: use "
    "/x/world/pools/mini-v1` |",
    "| no server running | `server_unavailable: cannot reach http://127.0.0.1:19010: ConnectError; is 'plada-server "
    "serve' running at http://127.0.0.1:19010?` |",
    "| `--server 127.0.0.1:19010` | `client_error: --server '127.0.0.1:19010' has no http:// or https:// in front: use "
    "http://127.0.0.1:19010` |",
    "| a missing `--data` (or `--eval`) file | `file_not_found: --data nope.npz: does not exist (looked in /x/work)` |",
    "| a wrong `--trust` key | `signature_invalid: payload 3f2a…: signed by key 9c1e…, not by the pinned key 77d0…; "
    "the server's key is printed by 'plada-server key show' on the server and served at URL/v1/signing-key; pin "
    "that one with --trust or PLADA_TRUST` |",
    "| `import FILE` without `--pool` | `payload_needs_pool: …; add --pool DIR, the pool the payload was made for "
    "(e.g. ~/.cache/plada/world/pools/mini-v1)` |",
    "| an attached copy missing too much | `coverage_too_low: payload fashion v3 uses 3,500 items; the copy at /x "
    "holds 3,010 of them (86.0 %), below --min-coverage 90 %: 490 missing (first: …); attach a fuller copy, or "
    "lower --min-coverage knowingly` |",
    "| Ctrl-C during `train` (exit 130) | `plada-client: interrupted after epoch 5; checkpoint saved in "
    "runs/fashion/checkpoint.pt; rerun the same command to resume` |",
    "",
    "`train --out DIR` resumes from DIR's checkpoint when the payload and the options are the same (the log says "
    "`resuming from its checkpoint`); another DIR trains from scratch.",
    "",
]


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
        *ERRORS_MD,
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
