"""The README as a newcomer runs it: the "By hand" block, then the Python quickstart, in order, in a fresh HOME
and working folder. Only the port differs (a free one instead of 8000); the agent, which follows its task for
ever, runs in the background until it has reported. Each step's output is checked."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.local import free_port

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
pytestmark = pytest.mark.slow
WAIT_UP = (
    "import sys, time, urllib.request\n"
    "for _ in range(240):\n"
    "    try: urllib.request.urlopen(sys.argv[1], timeout=2); break\n"
    "    except OSError: time.sleep(0.5)"
)


def block(heading: str, lang: str) -> str:
    section = README.split(f"\n{heading}\n", 1)[1]
    return section.split(f"```{lang}\n", 1)[1].split("```", 1)[0]


def commands(text: str) -> list[str]:
    """Shell lines with their continuations joined."""
    out, cur = [], ""
    for line in text.splitlines():
        cur += line.rstrip("\\").rstrip() + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            out.append(cur.strip())
            cur = ""
    return [c for c in out if c]


def test_the_readme_by_hand_block_and_python_example_run_in_order(tmp_path: Path) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    port = str(free_port())
    steps = commands(block("## By hand", "sh"))
    assert steps[0] == ". .venv/bin/activate" and steps[-1].startswith("plada-client agent")
    script = ["set -eo pipefail", "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT"]
    for i, cmd in enumerate(steps):
        cmd = cmd.replace("127.0.0.1:8000", f"127.0.0.1:{port}").replace("--port 8000", f"--port {port}")
        if cmd == ". .venv/bin/activate":
            cmd = f". {REPO}/.venv/bin/activate" if (REPO / ".venv/bin/activate").is_file() else ":"
        script.append(f"echo '@@@ {i}'")
        if cmd.startswith("plada-server serve"):
            script += [
                cmd,
                f"{sys.executable} -c '{WAIT_UP}' http://127.0.0.1:{port}/healthz",
            ]
        elif cmd.startswith("plada-client agent"):  # runs for ever: in the background until it has reported
            script += [
                cmd.split("  #")[0] + " > agent.log 2>&1 &",
                "for _ in $(seq 600); do grep -q 'reported to the server' agent.log && break; sleep 1; done",
                "cat agent.log",
            ]
        else:
            script.append(cmd + " 2>&1")
    py = block("## Quickstart in Python", "python").replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    (work / "example.py").write_text(py)
    script += ["echo '@@@ python'", f"{sys.executable} example.py 2>&1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLADA_")} | {"HOME": str(home)}
    run = subprocess.run(
        ["bash", "-c", "\n".join(script)], cwd=work, env=env, capture_output=True, text=True, timeout=1500
    )
    parts = dict(re.findall(r"@@@ (\w+)\n(.*?)(?=@@@ |\Z)", run.stdout, flags=re.S))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    out = {steps[int(k)].split()[1] if k.isdigit() else k: v for k, v in parts.items()}
    assert "pool_id:" in out["pool"] or "pool_id:" in parts["1"]
    published = parts[str(next(i for i, s in enumerate(steps) if s.startswith("plada-client publish")))]
    for field in ("recipe:", "predicted_client_acc (server val):", "items:", "bytes:"):
        assert field in published, published
    assert "metrics:" not in published  # the full document is --json's
    assert "verified: True" in parts[str(next(i for i, s in enumerate(steps) if "verify-pool" in s))]
    assert (
        "file: fashion.plada" in parts[str(next(i for i, s in enumerate(steps) if s.startswith("plada-client pull")))]
    )
    assert "task: fashion" in parts[str(next(i for i, s in enumerate(steps) if s.startswith("plada-client inspect")))]
    trained = parts[str(next(i for i, s in enumerate(steps) if s.startswith("plada-client train")))]
    assert "test_accuracy:" in trained and "| ," not in trained
    agent = parts[str(len(steps) - 1)]
    assert "v1: trained in" in agent and "test accuracy" in agent and "reported to the server" in agent
    # the Python example: it lists the task, then trains into the CLI's run folder, which resumes, out loud
    assert "['fashion']" in parts["python"]
    metrics = json.loads((work / "runs" / "fashion" / "metrics.json").read_text())
    resumed = metrics["resumed_from_epoch"] > 0
    assert resumed == ("resuming from its checkpoint" in parts["python"]), parts["python"]
