"""The dashboard in a real headless Chromium: live job progress, then versions, reports and the plot.

A real server + worker on loopback publish `animals`; the page is loaded while the job runs, the test waits
until the progress bar moves without reloading, then until the page reloads itself when the job ends; an
agent-style report is posted, the test reloads, and the version, its plot and the report appear. Screenshots
are written to ``test-artifacts/`` (path printed).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.local import LocalStack
from plada.client import PladaClient
from plada.shared.schemas import TaskSpec

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian: apt-get install chromium)")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, world_dir: Path) -> Iterator[LocalStack]:
    data = tmp_path_factory.mktemp("dash")
    s = LocalStack(data_dir=data / "server", pools_dir=world_dir / "pools", log_dir=data / "logs")
    s.start_server()
    s.start_worker()
    yield s
    s.stop()


def test_dashboard_shows_live_progress_versions_reports_and_plot(stack: LocalStack, world_dir: Path) -> None:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    classes = json.loads((world_dir / "tasks" / "animals" / "task.json").read_text())["classes"]
    spec = TaskSpec.model_validate(
        {"name": "animals", "classes": classes, "pool_id": "mini-v1", "keep": 0.02, "teacher": {"epochs": 6}}
    )
    with PladaClient(stack.url, token=stack.token()) as client, sync_playwright() as pw:
        resp = client.publish(spec, world_dir / "tasks" / "animals" / "train.npz")
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        outside: list[str] = []
        page.on("request", lambda r: None if r.url.startswith(stack.url) else outside.append(r.url))
        page.goto(stack.url + "/")
        bar = page.locator(f"#job-{resp.job.id} progress")
        bar.wait_for(timeout=30_000)
        first = float(bar.evaluate("el => el.value"))
        # the page's own polling must move the bar (no reload by the test)
        page.wait_for_function(
            f"() => {{ const b = document.querySelector('#job-{resp.job.id} progress');"
            f" return b && b.value > {first} + 0.02; }}",
            timeout=300_000,
        )
        live = ARTIFACTS / "dashboard-live.png"
        page.screenshot(path=str(live), full_page=True)
        client.wait_job(resp.job.id, timeout=600)
        # the page reloads itself once the job has ended (its poll sees the job leave the active list); a
        # reload by the test while that one is under way is cancelled ("not attached to an active page"), so
        # wait for the page's own reload to land first: it is also behaviour the dashboard promises
        page.locator(f"#job-{resp.job.id}.job-done").wait_for(timeout=60_000)
        page.wait_for_load_state("load")
        client.report(
            "animals",
            resp.version,
            {"client_id": "test-box", "student_arch": "smallcnn", "epochs": 5, "accuracy": 0.8, "wall_s": 12.5},
        )
        page.reload()
        page.locator("#task-animals").wait_for(timeout=30_000)
        assert page.locator("svg .pt-shipped").count() == 1
        assert page.locator("svg .pt-candidate").count() >= 1
        assert page.locator("svg .pt-reported").count() == 1
        row = page.locator("#task-animals + .task table tr").nth(1).inner_text()
        assert "ready" in row and "80.0 (1)" in row
        final = ARTIFACTS / "dashboard.png"
        page.screenshot(path=str(final), full_page=True)
        browser.close()
    assert not errors, errors
    assert not outside, f"the dashboard fetched off-host resources: {outside}"
    assert final.stat().st_size > 10_000
    print(f"\ndashboard screenshots: {live} {final}")
