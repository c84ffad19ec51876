"""docker-compose.yml checked without Docker (``docker compose config`` needs the compose plugin): every
service's command parses with the CLI it names, that CLI is what its image installs, its build context and
Dockerfile exist, its volumes are declared (or are files in the repository), its ports reach what the command
listens on, and ``depends_on`` names real services. The wiring test (tests/e2e/test_compose_wiring.py) then
runs the commands; this one fails fast on a typo."""

from __future__ import annotations

import argparse
import itertools
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from plada.client.cli import build_parser as client_parser
from plada.server.cli import build_parser as server_parser

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
PARSERS = {"plada-server": server_parser, "plada-client": client_parser}
EXTRA = {"plada-server": "server", "plada-client": "client"}  # the pyproject extra each CLI needs


def _strict(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """No abbreviated flags: a compose file must spell each flag as the CLI does."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _strict(sub)
    return parser


def _dockerfile(svc: dict[str, Any]) -> Path:
    build = svc["build"]
    return REPO / build.get("context", ".") / build.get("dockerfile", "Dockerfile")


@pytest.mark.parametrize("name", list(SERVICES))
def test_each_service_has_an_image_or_a_build_that_exists(name: str) -> None:
    svc = SERVICES[name]
    assert ("image" in svc) != ("build" in svc), f"{name}: exactly one of image and build"
    if "build" in svc:
        assert _dockerfile(svc).is_file(), f"{name}: {_dockerfile(svc)} is missing"
    else:
        assert re.fullmatch(r"[a-z0-9./-]+:[A-Za-z0-9._-]+", svc["image"]), f"{name}: pin the image's tag"


@pytest.mark.parametrize("name", [n for n, s in SERVICES.items() if "build" in s])
def test_each_plada_command_parses_with_the_cli_its_image_installs(name: str) -> None:
    svc = SERVICES[name]
    cmd = svc["command"]
    assert isinstance(cmd, list) and cmd[0] in PARSERS, f"{name}: command must start with a plada CLI"
    try:
        args = _strict(PARSERS[cmd[0]]()).parse_args(cmd[1:])
    except SystemExit as exc:  # argparse's own exit on a bad flag
        pytest.fail(f"{name}: {' '.join(cmd)!r} does not parse ({exc})")
    assert callable(args.fn)
    text = _dockerfile(svc).read_text()
    installs = re.findall(r"pip install[^\n]*'\.\[([a-z,]+)\]'", text)
    assert installs and EXTRA[cmd[0]] in installs[0].split(","), (
        f"{name}: {_dockerfile(svc).name} lacks [{EXTRA[cmd[0]]}]"
    )
    assert svc.get("entrypoint") == [], f"{name}: the image's ENTRYPOINT would be prefixed to the command"
    for flag, value in itertools.pairwise(cmd):  # services talk to each other by compose names
        if flag == "--server":
            host = value.split("://", 1)[1].split(":")[0]
            assert host in SERVICES, f"{name}: --server {value} names no service"


@pytest.mark.parametrize("name", list(SERVICES))
def test_volumes_ports_and_dependencies_are_declared(name: str) -> None:
    svc = SERVICES[name]
    declared = set(COMPOSE.get("volumes") or {})
    for vol in svc.get("volumes", []):
        src, target, *mode = vol.split(":")
        assert target.startswith("/") and set(mode) <= {"ro", "rw"}, f"{name}: volume {vol!r}"
        if src.startswith("."):
            assert (REPO / src).exists(), f"{name}: {src} is not in the repository"
        else:
            assert src in declared, f"{name}: volume {src!r} is not declared under volumes:"
    for port in svc.get("ports", []):
        host, _outside, inside = port.split(":")
        assert host == "127.0.0.1", f"{name}: publish on loopback only ({port})"
        cmd, env = svc.get("command", []), svc.get("environment", {})
        listens = cmd[cmd.index("--port") + 1] if "--port" in cmd else env.get("PLADA_LISTEN")
        assert listens == inside, f"{name}: port {port} but the service listens on {listens}"
    for dep, cond in (svc.get("depends_on") or {}).items():
        assert dep in SERVICES, f"{name}: depends on unknown service {dep}"
        assert cond["condition"] in ("service_started", "service_healthy", "service_completed_successfully")
        if cond["condition"] == "service_healthy":
            assert "healthcheck" in SERVICES[dep], f"{name}: waits for {dep} to be healthy; it has no healthcheck"
