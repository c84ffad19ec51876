"""The code as a newcomer maps it: every module with its line count, and who imports whom.

    python scripts/codemap.py                 # the working tree
    python scripts/codemap.py --rev 75dcf13   # the tree at a commit (line counts and imports from git)
    python scripts/codemap.py --graph         # the import graph between the packages' parts

Imports are read from the source (``import plada.x`` and ``from plada.x import y``, also inside functions:
a lazy import is still a dependency), never by importing anything. ``layers()`` is what the house rule test
(shared ← server, shared ← client, no arrow back) checks.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("shared", "server", "client")


def _files(rev: str | None) -> dict[str, str]:
    """path → source of every module in the three packages (working tree, or ``rev``)."""
    if rev is None:
        return {
            str(p.relative_to(REPO)): p.read_text()
            for pkg in PACKAGES
            for p in sorted((REPO / pkg).rglob("*.py"))
            if "migrations/versions" not in str(p)
        }
    names = subprocess.run(
        ["git", "-C", str(REPO), "ls-tree", "-r", "--name-only", rev, *PACKAGES],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return {
        n: subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{n}"], capture_output=True, text=True).stdout
        for n in names
        if n.endswith(".py") and "migrations/versions" not in n
    }


def module_of(path: str) -> str:
    """``server/pipeline/run.py`` → ``server.pipeline.run``; a package's ``__init__`` is the package."""
    parts = path.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str) -> set[str]:
    """The plada modules a source imports (``plada.`` stripped), at any depth of the file."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("plada."):
            base = node.module.removeprefix("plada.")
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)  # `from plada.shared import nn` names a module
        elif isinstance(node, ast.Import):
            out.update(a.name.removeprefix("plada.") for a in node.names if a.name.startswith("plada."))
    return out


def graph(files: dict[str, str]) -> dict[str, set[str]]:
    """module → the modules of this tree it imports."""
    modules = {module_of(p) for p in files}
    out: dict[str, set[str]] = {}
    for path, src in files.items():
        here = module_of(path)
        out[here] = {m for m in imports(src) if m in modules and m != here}
    return out


def part(module: str) -> str:
    """The unit of the package-level graph: a sub-package (``server.pipeline``) or a top-level module."""
    bits = module.split(".")
    return ".".join(bits[:2])


def layers(files: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """Imports that break the house rule: shared imports nothing of server or client; client nothing of
    server; server nothing of client. Returns (importer, imported) pairs; empty when the rule holds."""
    bad = []
    allowed = {"shared": {"shared"}, "client": {"shared", "client"}, "server": {"shared", "server"}}
    for mod, deps in graph(files or _files(None)).items():
        bad += [(mod, d) for d in sorted(deps) if d.split(".")[0] not in allowed[mod.split(".")[0]]]
    return bad


def private_reach(files: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """Places where a module uses another module's private name (``from plada.x import _y`` or ``mod._y``):
    what a module keeps private is free to change, so nobody else may lean on it."""
    hits = []
    for path, src in (files or _files(None)).items():
        tree = ast.parse(src)
        modules: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("plada."):
                hits += [(path, f"{node.module}.{a.name}") for a in node.names if _private(a.name)]
                modules |= {a.asname or a.name for a in node.names}
            elif isinstance(node, ast.Import):
                modules |= {a.asname or a.name for a in node.names if a.name.startswith("plada.")}
        for node in ast.walk(tree):
            named = isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            if named and node.value.id in modules and _private(node.attr):
                hits.append((path, f"{node.value.id}.{node.attr}"))
    return sorted(set(hits))


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rev", help="a git revision instead of the working tree")
    ap.add_argument("--graph", action="store_true", help="print the import graph between the packages' parts")
    args = ap.parse_args()
    files = _files(args.rev)
    if args.graph:
        edges: dict[str, set[str]] = defaultdict(set)
        for mod, deps in graph(files).items():
            edges[part(mod)] |= {part(d) for d in deps if part(d) != part(mod)}
        print("| part | imports |\n|---|---|")
        for p in sorted({part(m) for m in graph(files)}):
            print(f"| `{p}` | {', '.join(f'`{d}`' for d in sorted(edges[p])) or '–'} |")
        return
    total = 0
    print("| module | lines |\n|---|---:|")
    for path in sorted(files):
        n = files[path].count("\n")
        total += n
        print(f"| `{path}` | {n:,} |")
    print(f"| **{len(files)} modules** | **{total:,}** |")


if __name__ == "__main__":
    main()
