"""The device benchmark stays runnable: bench/gpu_check.py on CPU, tiny, prints every row of its table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_runs_on_cpu_and_prints_its_table() -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "gpu_check.py"),
            "--items",
            "16",
            "--features",
            "20000",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    stages = [r.split("|")[1].strip() for r in rows[1:]]
    assert len(stages) == 7 and stages[0].startswith("manifest") and stages[-1].startswith("scoring 20,000")
    assert all(float(r.split("|")[2].replace(",", "")) > 0 for r in rows[1:])  # every stage measured something
