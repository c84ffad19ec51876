"""A version's page in headless Chromium, on a real-photo pool: the kept images per class (alt text = pool key
and label, every thumbnail drawn), the candidates validation compared, the leakage audit's pairs, what
changed against another version or candidate, and nothing shown for a token-gated task.

A real server and worker publish onto a folder pool of photo crops (scikit-image's pictures) with the
packaged EfficientNet-Lite0 index; the upload includes three pool items verbatim, so the audit has pairs to
show. The screenshot is written to ``test-artifacts/version-page.png``.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from harness.local import LocalStack
from plada.client import PladaClient
from plada.server.pipeline.features import build_pretrained_index
from plada.shared.payload import decode_payload
from plada.shared.pool import Pool, index_image_folder

pytest.importorskip("skimage.data")
from photo_crops import crops, photo

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "camera", "hubble_deep_field")
LEAKED = np.array([3, 14, 25])

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian: apt-get install chromium)")


@pytest.fixture(scope="module")
def photo_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, Pool]]:
    from PIL import Image

    root = tmp_path_factory.mktemp("vpage")
    for name in PHOTOS:
        (root / "src" / name).mkdir(parents=True)
        for i, crop in enumerate(crops(photo(name), 10, 40, seed=1, smallest=0.5)):
            Image.fromarray(crop).save(root / "src" / name / f"{i}.png")
    pool = index_image_folder(root / "src", root / "pools" / "photos", "photos")
    build_pretrained_index(pool, image_size=64)
    stack = LocalStack(data_dir=root / "server", pools_dir=root / "pools", log_dir=root / "logs")
    stack.start_server()
    stack.start_worker()
    yield stack, pool
    stack.stop()


def _upload(pool: Pool) -> bytes:
    x = np.concatenate(
        [
            pool.batch(LEAKED),  # three pool items verbatim, first: the audit's examples must pair them
            crops(photo("chelsea"), 20, 40, seed=2, smallest=0.5),
            crops(photo("coffee"), 20, 40, seed=3, smallest=0.5),
        ]
    )
    folders = [str(pool.manifest.keys[i]).split("/")[0] for i in LEAKED]
    y = np.concatenate([[0 if f == "chelsea" else 1 for f in folders], np.repeat([0, 1], 20)])
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y)
    return buf.getvalue()


def _spec(name: str, keep: float, access: str = "public") -> dict[str, object]:
    return {"name": name, "classes": ["cat", "coffee"], "pool_id": "photos", "keep": keep, "access": access}


def test_the_version_page_shows_what_a_payload_teaches(photo_stack: tuple[LocalStack, Pool]) -> None:
    from playwright.sync_api import sync_playwright

    stack, pool = photo_stack
    data = _upload(pool)
    with PladaClient(stack.url, token=stack.token()) as c:
        jobs = [
            c.publish(_spec("cat-or-coffee", 20 / 60), data, filename="d.npz").job.id,
            c.publish(_spec("secret", 20 / 60, access="token"), data, filename="d.npz").job.id,
        ]
        for j in jobs:
            assert c.wait_job(j, timeout=600).state == "succeeded"
        v1 = c.version("cat-or-coffee", 1)
        report = {"client_id": "lab-box", "student_arch": "head", "epochs": 1, "accuracy": 0.875, "wall_s": 3.0}
        c.report("cat-or-coffee", 1, report | {"n_test": 40})
        assert c.wait_job(c.publish(_spec("cat-or-coffee", 10 / 60), data, filename="d.npz").job.id).state == (
            "succeeded"
        )
    m = v1.metrics
    counts = m["selection"]["label_counts"]
    keys = {str(k) for k in pool.manifest.keys}
    ref = m["preview"]["sha256"]
    preview = json.loads((stack.data_dir / "blobs" / "sha256" / ref[:2] / ref).read_bytes())
    base = f"{stack.url}/tasks/cat-or-coffee/versions/1"

    # access: anonymous pages, so a gated task, its thumbnails and unnamed pool items are not found
    assert httpx.get(f"{stack.url}/tasks/secret/versions/1").status_code == 404
    assert httpx.get(f"{stack.url}/tasks/secret/versions/1/thumbs/{LEAKED[0]}.png").status_code == 404
    r = httpx.get(f"{base}/thumbs/{10**6}.png")  # not an item this version (or any of its candidates) names
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json")
    shipped = httpx.get(f"{base}/thumbs/{LEAKED[0]}.png")  # a flagged pool item: named by the leakage pairs
    assert shipped.status_code == 200 and shipped.headers["content-type"] == "image/png"
    assert "immutable" in shipped.headers["cache-control"]
    assert httpx.get(f"{base}/uploads/{'0' * 64}.png").status_code == 404

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        off_host: list[str] = []
        page.on("request", lambda r: None if r.url.startswith(stack.url) else off_host.append(r.url))
        page.goto(base)
        # the per-class grids: count, alt text = pool key and label
        grids = page.locator(".grid[data-class]")
        assert grids.count() == 2
        for c, name in enumerate(["cat", "coffee"]):
            alts = grids.nth(c).locator("img").evaluate_all("els => els.map(e => e.alt)")
            assert len(alts) == min(counts[c], 24) > 0
            shown = [alt.split(" · ") for alt in alts]
            assert all(key in keys and label == name for key, label in shown)
            # in the order the version's preview keeps: the teacher's most confident first
            assert [key for key, _ in shown] == [str(pool.manifest.keys[i]) for i, _ in preview["top"][c][:24]]
        # every thumbnail is drawn (lazy ones once scrolled into view)
        page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
        page.wait_for_function(
            "() => [...document.images].every(i => i.complete && i.naturalWidth > 0)", timeout=60_000
        )
        assert page.evaluate("[...document.querySelectorAll('img.tile')].map(i => i.naturalWidth)") == [64] * (
            min(counts[0], 24) + min(counts[1], 24)
        )
        # the candidates validation compared, the shipped one marked
        rows = page.locator("#candidates tr")
        assert rows.count() == 1 + len(m["validation"]["candidates"]) == 7
        assert page.locator("#candidates tr.chosen").inner_text().startswith(m["validation"]["chosen"])
        # the leakage pairs: the upload image beside the pool item
        pairs = page.locator("#leakage tr.pair")
        assert pairs.count() >= 1
        for i in range(pairs.count()):
            imgs = pairs.nth(i).locator("img")
            assert imgs.count() == 2
            assert imgs.evaluate_all("els => els.every(e => e.naturalWidth > 0)")
        flagged = [r.split("\t")[-1].strip() for r in pairs.all_inner_texts()]
        assert flagged[:3] == [str(pool.manifest.keys[i]) for i in LEAKED] and set(flagged) <= keys
        # (crops of the same photo may be flagged too: near duplicates a person should judge, hence the pairs)
        # what clients reported
        assert page.locator("#reports tr").nth(1).inner_text().split("\t")[:5] == ["lab-box", "head", "1", "87.5", "40"]
        assert page.locator("svg .pt-reported").count() == 1
        shot = ARTIFACTS / "version-page.png"
        page.screenshot(path=str(shot), full_page=True)

        # what a candidate would have kept instead: the page's counts are the payloads' differences
        def blob(sha: str) -> bytes:
            return (stack.data_dir / "blobs" / "sha256" / sha[:2] / sha).read_bytes()

        shipped_p = decode_payload(blob(v1.sha256), layout=pool.layout)
        diffs = {}
        for cand in preview["candidates"]:
            other = decode_payload(blob(cand["payload"]), layout=pool.layout)
            diffs[cand["label"]] = [
                (
                    len(np.setdiff1d(shipped_p.indices[shipped_p.labels == c], other.indices[other.labels == c])),
                    len(np.setdiff1d(other.indices[other.labels == c], shipped_p.indices[shipped_p.labels == c])),
                )
                for c in range(2)
            ]
        differing = [lab for lab, d in diffs.items() if any(a or b for a, b in d)]
        assert differing, diffs
        first_cell = page.locator("td:first-child", has_text=re.compile(f"^{re.escape(differing[0])}$"))
        link = page.locator("#candidates tr").filter(has=first_cell).locator("a", has_text="compare")
        link.click()
        page.locator("#changes").wait_for()
        added = [int(t.split(" ")[0].lstrip("+")) for t in page.locator(".added").all_inner_texts()]
        removed = [int(t.split(" ")[0].lstrip("−")) for t in page.locator(".removed").all_inner_texts()]
        assert list(zip(added, removed, strict=True)) == [d for d in diffs[differing[0]] if any(d)]
        # and what changed from v1 to v2 (half the budget): removed items come from v1's thumbnails
        page.goto(f"{stack.url}/tasks/cat-or-coffee/versions/2?compare=1")
        removed = page.locator(".removed")
        assert sum(int(t.split(" ")[0].lstrip("−")) for t in removed.all_inner_texts()) >= 8
        page.wait_for_function(
            "() => [...document.images].every(i => i.complete && i.naturalWidth > 0)", timeout=60_000
        )
        page.screenshot(path=str(ARTIFACTS / "version-compare.png"), full_page=True)
        browser.close()
    assert not errors, errors
    assert not off_host, f"the page fetched off-host resources: {off_host}"
    print(f"\nversion page screenshot: {shot}")
