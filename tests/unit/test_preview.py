"""Pictures of a payload: per-class order, thumbnails, contact sheets, the preview a version keeps, and the
bounded thumbnail cache."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from plada.server.pipeline.preview import PER_CLASS, build_preview, preview_bytes
from plada.server.version_page import ThumbCache
from plada.shared.payload import Payload, decode_payload, encode_payload
from plada.shared.pool import Pool
from plada.shared.preview import TILE, contact_html, contact_sheet, per_class_items, png_bytes, thumbnail


def test_per_class_items_most_confident_first_else_payload_order() -> None:
    idx = np.array([10, 11, 12, 13, 14])
    lab = np.array([0, 1, 0, 0, 1])
    conf = np.array([0.2, 0.9, 0.7, 0.7, 0.95])
    assert [o.tolist() for o in per_class_items(idx, lab, 3, conf)] == [[12, 13, 10], [14, 11], []]
    assert [o.tolist() for o in per_class_items(idx, lab, 2)] == [[10, 12, 13], [11, 14]]


@pytest.mark.parametrize(
    ("shape", "inner"), [((28, 28), (64, 64)), ((100, 50, 3), (64, 32)), ((224, 224, 3), (64, 64))]
)
def test_thumbnails_are_square_tiles_that_keep_the_aspect(shape: tuple[int, ...], inner: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(1, 255, shape, dtype=np.uint8)
    t = thumbnail(img)
    assert t.size == (TILE, TILE) and t.mode == "RGB"  # type: ignore[attr-defined]
    a = np.asarray(t)
    content = np.argwhere((a != 255).any(-1))  # the padding is white, the (random, non-white) image is not
    h, w = content.max(0) - content.min(0) + 1
    assert (h, w) == inner
    if shape == (28, 28):  # enlarged with nearest: every source pixel becomes a 2x2+ block of the same value
        assert a[0, 0, 0] == img[0, 0] and a[-1, -1, 0] == img[-1, -1]
    back = Image.open(io.BytesIO(png_bytes(img)))
    assert back.format == "PNG" and back.size == (TILE, TILE)


def test_contact_sheet_has_a_block_per_class_with_its_tiles() -> None:
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 255, (n, 28, 28), dtype=np.uint8) for n in (13, 0, 3)]
    sheet = contact_sheet(imgs, ["a", "b", "c"], [100, 0, 3], tile=32, columns=6)
    gap, label_h = 4, 18
    heights = [label_h + rows * (32 + gap) + gap for rows in (3, 1, 1)]
    assert sheet.size == (6 * 36 + gap, sum(heights))  # type: ignore[attr-defined]
    a = np.asarray(sheet)
    # the 13th tile of class a sits on its third line, first column; its top-left pixel is the item's
    y0 = label_h + 2 * 36
    assert tuple(a[y0, gap]) == (imgs[0][12][0, 0],) * 3
    html = contact_html(imgs, ["a", "b", "c"], [100, 0, 3], [[f"k{i}" for i in range(len(x))] for x in imgs], title="t")
    assert html.count("<img") == 16 and 'alt="k12 · a"' in html and "none kept" in html and "http" not in html


def _payload(n_pool: int = 200) -> Payload:
    rng = np.random.default_rng(2)
    idx = np.sort(rng.choice(n_pool, 90, replace=False))
    return Payload(
        indices=idx,
        labels=np.arange(90) % 3,
        classes=("x", "y", "z"),
        pool_id="ab" * 32,
        n_pool=n_pool,
        task="t",
        version=1,
    )


def test_the_preview_keeps_each_class_most_confident_first_and_names_its_blobs() -> None:
    p = _payload()
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(200, 3))
    upload = rng.integers(0, 255, (10, 28, 28), dtype=np.uint8)
    examples = [{"pool_key": "k5", "kind": "near", "pool_index": 5, "upload_index": 7, "cosine": 0.99}]
    other = dataclasses.replace(p, indices=p.indices[:30], labels=p.labels[:30])
    cands = [("energy", encode_payload(other)), ("random", encode_payload(p))]
    doc, blobs = build_preview(p, logits, upload, examples, cands, chosen="random")
    doc = json.loads(preview_bytes(doc))  # what the worker stores round-trips through JSON
    assert doc["counts"] == [30, 30, 30] and doc["classes"] == ["x", "y", "z"] and doc["per_class"] == PER_CLASS
    z = np.exp(logits - logits.max(1, keepdims=True))
    prob = z / z.sum(1, keepdims=True)
    for c, top in enumerate(doc["top"]):
        items = [i for i, _ in top]
        assert set(items) == set(p.indices[p.labels == c].tolist())
        confs = [prob[i, c] for i in items]
        assert confs == sorted(confs, reverse=True)
        assert [round(float(prob[i, c]), 4) for i in items] == [conf for _, conf in top]
    (pair,) = doc["leakage_pairs"]
    assert pair["pool_index"] == 5 and Image.open(io.BytesIO(blobs[pair["upload_png"]])).size == (TILE, TILE)
    assert [c["chosen"] for c in doc["candidates"]] == [False, True]
    assert decode_payload(blobs[doc["candidates"][0]["payload"]]).indices.tolist() == p.indices[:30].tolist()


def test_the_thumbnail_cache_is_bounded_and_keeps_what_is_read(tmp_path: Path) -> None:
    cache = ThumbCache(tmp_path / "t", max_bytes=10_000)
    made: list[str] = []

    def make(key: str) -> bytes:
        made.append(key)
        return key.encode() * (1000 // len(key))

    for i in range(8):
        cache.get(f"k{i:03d}", lambda i=i: make(f"k{i:03d}"))
    assert cache.get("k000", lambda: make("again")) == b"k000" * 250 and made[-1] == "k007"  # a hit: not redrawn
    for i in range(8, 30):
        cache.get(f"k{i:03d}", lambda i=i: make(f"k{i:03d}"))
        cache.get("k000", lambda: make("k000"))  # read again and again: the oldest to others, kept
    assert cache.size() <= 10_000
    assert "k000" not in made[8:] and (tmp_path / "t" / "k0" / "k000.png").is_file()
    assert not (tmp_path / "t" / "k0" / "k001.png").exists()  # unread since: evicted
    off = ThumbCache(tmp_path / "off", max_bytes=0)
    assert off.get("a", lambda: b"x") == b"x" and not (tmp_path / "off").exists()


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from plada.client.cli import main

    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def _sheet_payload(pool: Pool, tmp_path: Path, per_class: list[np.ndarray], tiers: np.ndarray | None = None) -> Path:
    idx = np.concatenate(per_class)
    lab = np.concatenate([np.full(len(o), c) for c, o in enumerate(per_class)])
    order = np.argsort(idx, kind="stable")
    p = Payload(
        indices=idx[order],
        labels=lab[order],
        classes=tuple(f"class {c}" for c in range(len(per_class))),
        pool_id=pool.pool_id,
        n_pool=len(pool),
        task="look",
        version=3,
        pool_name=pool.name,
        tiers=None if tiers is None else tiers[order],
    )
    path = tmp_path / "look.plada"
    path.write_bytes(encode_payload(p, layout=pool.layout))
    return path


@pytest.mark.parametrize("which", ["mini", "photo"])
def test_inspect_preview_draws_the_kept_items_from_the_local_pool(
    which: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest
) -> None:
    """The sheet's size follows its classes and tiles, and every tile is the pool item it claims to be."""
    if which == "mini":
        pool = request.getfixturevalue("pool")  # the mini world, 28 px grey
    else:
        from photo_crops import crops, photo  # real photos, 40 px RGB, a folder pool

        from plada.shared.pool import index_image_folder

        src = tmp_path / "src"
        for name in ("chelsea", "coffee", "rocket"):
            (src / name).mkdir(parents=True)
            for i, crop in enumerate(crops(photo(name), 6, 40, seed=1)):
                Image.fromarray(crop).save(src / name / f"{i}.png")
        pool = index_image_folder(src, tmp_path / "photo-pool", "photos")
    n = len(pool)
    per_class = [np.arange(0, 7), np.arange(n - 3, n), np.arange(9, 11)]  # 7, 3 and 2 items
    tiers = np.concatenate([[1, 1, 1, 1, 1, 1, 0], [0, 0, 0], [0, 0]])  # class 0's last item is its most valued
    path = _sheet_payload(pool, tmp_path, per_class, tiers)
    png, page = tmp_path / "sheet.png", tmp_path / "sheet.html"
    code, out, err = _cli(
        capsys, "inspect", str(path), "--pool", str(pool.root), "--preview", str(png), "--html", str(page),
        "--per-class", "5", "--json",
    )  # fmt: skip
    assert code == 0, err
    info = json.loads(out)["preview"]
    assert info["tiles"] == 5 + 3 + 2
    sheet = np.asarray(Image.open(png).convert("RGB"))
    gap, label_h, tile = 4, 18, TILE
    assert (
        sheet.shape[:2] == (3 * (label_h + tile + gap + gap), 12 * (tile + gap) + gap) == tuple(info["png_size"])[::-1]
    )
    # class 0: its tier-0 item first, then payload order; class 1 starts at its block's first tile
    expect = [6, 0, 1, 2, 3]
    for col, item in enumerate(expect):
        x0, y0 = gap + col * (tile + gap), label_h
        want = np.asarray(thumbnail(pool.batch(np.array([item]))[0]))
        assert np.array_equal(sheet[y0 : y0 + tile, x0 : x0 + tile], want), (which, col, item)
    y1 = label_h + tile + gap + gap + label_h
    want = np.asarray(thumbnail(pool.batch(np.array([n - 3]))[0]))
    assert np.array_equal(sheet[y1 : y1 + tile, gap : gap + tile], want)
    html = page.read_text()
    keys = [str(pool.manifest.keys[i]) for i in expect]
    assert html.count("<img") == 10 and f'alt="{keys[0]} · class 0"' in html
    assert html.index(f'alt="{keys[0]} ') < html.index(f'alt="{keys[1]} ')


def test_inspect_preview_needs_the_pool_and_refuses_another(
    pool: Pool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from plada.shared.pool import write_array_pool

    path = _sheet_payload(pool, tmp_path, [np.arange(3), np.arange(5, 8)])
    code, _, err = _cli(capsys, "inspect", str(path), "--preview", str(tmp_path / "a.png"))
    assert code == 1 and err.count("\n") == 1 and "give --pool" in err
    other = write_array_pool(tmp_path / "o", "other", np.zeros((50, 28, 28), np.uint8), [f"k{i}" for i in range(50)])
    code, _, err = _cli(capsys, "inspect", str(path), "--pool", str(other.root), "--preview", str(tmp_path / "b.png"))
    assert code == 1 and err.count("\n") == 1 and not (tmp_path / "b.png").exists()
