"""Schemathesis against /openapi.json of a real server: generated requests (valid and invalid) must never get
a 5xx. Bounded here (CI); a longer run is documented in docs/benchmarks.md."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from harness.local import LocalStack

EXAMPLES = int(os.environ.get("PLADA_API_FUZZ_EXAMPLES", "25"))


def test_no_server_errors_on_generated_requests(api_stack: LocalStack, tmp_path: Path) -> None:
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    assert st, "schemathesis is a dev dependency: pip install -e '.[dev]'"
    r = subprocess.run(
        [
            st,
            "run",
            f"{api_stack.url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "-n",
            str(EXAMPLES),
            "-H",
            f"Authorization: Bearer {api_stack.token()}",
            "--seed",
            "7",
            "--no-color",
            "--report",
            "junit",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    summary = r.stdout[-3000:]
    assert r.returncode == 0, summary
    assert "generated" in summary and " failure" not in summary.split("SUMMARY")[-1], summary
