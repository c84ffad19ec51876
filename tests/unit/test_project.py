"""Project-level contracts: error codes documented and unique, compose commands exist, settings documented."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from plada.shared.errors import all_error_classes

REPO = Path(__file__).resolve().parents[2]


def test_error_codes_are_unique_and_documented() -> None:
    codes = [c.code for c in all_error_classes()]
    assert len(codes) == len(set(codes))
    doc = (REPO / "docs" / "http-api.md").read_text()
    missing = [c for c in [*codes, "validation_error", "not_found", "internal_error"] if f"`{c}`" not in doc]
    assert not missing, f"undocumented error codes: {missing}"


def test_every_setting_is_documented() -> None:
    from plada.server.settings import Settings

    doc = (REPO / "docs" / "operations.md").read_text()
    missing = [n for n in Settings.model_fields if f"PLADA_{n.upper()}" not in doc]
    assert not missing, f"undocumented settings: {missing}"


def test_every_documented_server_variable_is_a_setting() -> None:
    """The settings table lists only real fields: a variable the server reads is read through Settings."""
    import re

    from plada.server.settings import Settings

    doc = (REPO / "docs" / "operations.md").read_text()
    table = doc.split("## Settings", 1)[1].split("\n\n", 1)[0]
    documented = {m.lower() for m in re.findall(r"^\| `PLADA_([A-Z0-9_]+)`", table, flags=re.M)}
    assert documented == set(Settings.model_fields), documented ^ set(Settings.model_fields)


def test_no_module_below_the_edges_reads_plada_variables() -> None:
    """Configuration is passed, not smuggled: only the settings and the CLIs (process edges) read PLADA_*."""
    import re

    edges = {"server/settings.py", "server/cli", "client/cli", "shared/cli.py", "client/api.py", "client/cache.py"}
    edges |= {"shared/datasets/mini.py"}  # the world's cache path
    read = re.compile(r"""(environ(\.get|\.setdefault)?\(|environ\[|getenv\()\s*["']PLADA_""")
    readers = [
        str(p.relative_to(REPO))
        for pkg in ("shared", "server", "client")
        for p in (REPO / pkg).rglob("*.py")
        if not {str(p.relative_to(REPO)), str(p.parent.relative_to(REPO))} & edges and read.search(p.read_text())
    ]
    assert not readers, readers


def _console_scripts() -> dict[str, str]:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def test_compose_commands_exist_in_the_package() -> None:
    """No Docker engine runs here, so the compose file is checked statically against the real CLIs."""
    from plada.client.cli import build_parser as client_parser
    from plada.server.cli import build_parser as server_parser

    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    parsers = {"plada-server": server_parser(), "plada-client": client_parser()}
    scripts = _console_scripts()
    services = compose["services"]
    assert {"server", "worker", "client", "nginx"} <= set(services)
    for name, svc in services.items():
        if "image" in svc:  # a stock image (the nginx front): its mounted files must exist here
            for vol in svc.get("volumes", []):
                src = vol.split(":")[0]
                assert src in compose.get("volumes", {}) or (REPO / src).exists(), f"{name}: {src} missing"
            continue
        cmd = svc["command"]
        argv = cmd if isinstance(cmd, list) else cmd.split()
        assert argv[0] in scripts, f"{name}: {argv[0]} is not a console script"
        parsers[argv[0]].parse_args(argv[1:])  # raises SystemExit on an unknown command or flag
        dockerfile = REPO / svc["build"]["dockerfile"]
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
        for vol in svc.get("volumes", []):
            assert vol.split(":")[0] in compose.get("volumes", {}) or vol.startswith("./")


@pytest.mark.parametrize("dockerfile", ["Dockerfile.server", "Dockerfile.client"])
def test_dockerfiles_install_the_package(dockerfile: str) -> None:
    text = (REPO / dockerfile).read_text()
    assert re.search(r"pip install .*\.\[", text), "the image must install plada with its extras"
    entry = re.search(r'ENTRYPOINT \["([^"]+)"', text)
    assert entry and entry.group(1) in _console_scripts()


def test_console_scripts_are_installed() -> None:
    for name in _console_scripts():
        assert shutil.which(name) or (Path(__import__("sys").executable).parent / name).exists()


def test_generated_docs_match_the_code(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/http-api.md's route table comes from the OpenAPI schema and docs/cli.md from --help."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gendocs", REPO / "scripts" / "gendocs.py")
    assert spec and spec.loader
    gendocs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gendocs)
    monkeypatch.setenv("COLUMNS", gendocs.HELP_COLUMNS)
    http = (REPO / "docs" / "http-api.md").read_text()
    assert gendocs.http_api_md(http) == http, "docs/http-api.md is out of date: run make docs"
    assert gendocs.cli_md() == (REPO / "docs" / "cli.md").read_text(), "docs/cli.md is out of date: run make docs"
    for path in ("/v1/tasks/{task}/versions/{version}/reports", "/v1/jobs"):
        assert f"`{path}`" in http


def test_the_error_tree_in_the_docstring_is_the_real_one() -> None:
    """The tree drawn in shared/errors.py is generated from the classes: a new error class (or a changed code
    or status) must be drawn there too (regenerate with ``error_tree()``)."""
    from plada.shared import errors

    drawn = "\n".join(line[4:] for line in (errors.__doc__ or "").splitlines() if line.startswith("    "))
    assert drawn == errors.error_tree()
    assert all(cls.__name__ in drawn for cls in errors.all_error_classes())


def test_the_web_app_does_not_import_torch() -> None:
    """The API process answers HTTP; torch (hundreds of MB, seconds to import) belongs to the worker."""
    import subprocess
    import sys

    code = "import sys, plada.server.app, plada.server.settings; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_test_harness_is_not_shipped() -> None:
    """Local processes for tests and benchmarks (harness/) stay out of the installed package."""
    import importlib.util
    import tomllib

    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert all(p.startswith("plada.") for p in packages) and importlib.util.find_spec("plada.server.local") is None
    assert (REPO / "harness" / "local.py").is_file()


def test_the_house_layers_hold() -> None:
    """shared ← server, shared ← client, and no arrow back (lazy imports inside functions count too)."""
    from scripts.codemap import graph, layers, private_reach

    assert layers() == []
    assert private_reach() == []  # and no module leans on another's private names
    assert private_reach({"server/a.py": "from plada.server import dashboard as d\nd._css\n"}) == [
        ("server/a.py", "d._css")
    ]
    g = graph({"shared/a.py": "from plada.server import repo\n", "server/repo.py": "", "client/b.py": ""})
    assert layers({"shared/a.py": "def f():\n    from plada.server import repo\n", "server/repo.py": ""}) == [
        ("shared.a", "server.repo")
    ] and g["shared.a"] == {"server.repo"}
