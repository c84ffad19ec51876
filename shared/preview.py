"""Pictures of what a payload teaches, drawn from a copy of the pool: thumbnails and per-class contact sheets.

The server and every client hold the pool, so both draw the same picture from their own copy and no pixel
crosses the network: the dashboard's version page shows the server's, ``plada-client inspect --preview``
the client's. Numbers (bytes, accuracies) say whether a version is good; a grid of the kept "tench" images
says whether they are fish.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL.Image import Image

TILE = 64  # pixels a side: a 28 px item is drawn at 2x (nearest), a 224 px one shrunk


def per_class_items(
    indices: np.ndarray, labels: np.ndarray, n_classes: int, confidence: np.ndarray | None = None
) -> list[np.ndarray]:
    """The kept pool indices of each class: the most confident first when the teacher's confidence is known
    (the server's view), else in payload order (all a client knows). Ties keep payload order."""
    indices, labels = np.asarray(indices, np.int64), np.asarray(labels, np.int64)
    out = []
    for c in range(n_classes):
        sel = np.flatnonzero(labels == c)
        if confidence is not None and len(sel):
            sel = sel[np.argsort(-np.asarray(confidence, np.float64)[sel], kind="stable")]
        out.append(indices[sel])
    return out


def _rgb(img: np.ndarray) -> np.ndarray:
    a = np.asarray(img)
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return np.ascontiguousarray(a[..., :3].astype(np.uint8))


def thumbnail(img: np.ndarray, size: int = TILE) -> Image:
    """A ``size``-pixel-a-side PIL image: small items enlarged with nearest (pixels stay honest), large ones
    shrunk with a filter; the aspect ratio is kept, padded with white."""
    from PIL import Image

    a = _rgb(img)
    h, w = a.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    im = Image.fromarray(a).resize((nw, nh), Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS)
    if (nh, nw) == (size, size):
        return im
    canvas = Image.new("RGB", (size, size), "white")
    canvas.paste(im, ((size - nw) // 2, (size - nh) // 2))
    return canvas


def png_bytes(img: np.ndarray, size: int = TILE) -> bytes:
    buf = io.BytesIO()
    thumbnail(img, size).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def contact_sheet(
    images: Sequence[np.ndarray],
    class_names: Sequence[str],
    counts: Sequence[int],
    *,
    tile: int = TILE,
    columns: int = 12,
) -> Image:
    """One row block per class: its name and item count, then up to ``columns`` tiles a line. ``images[c]``
    is an array (n_c, h, w[, c]) of the items to draw for class c (already cut to how many to show)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    label_h, gap = 18, 4
    heights = [label_h + max(1, -(-len(imgs) // columns)) * (tile + gap) + gap for imgs in images]
    width = columns * (tile + gap) + gap
    sheet = Image.new("RGB", (width, max(1, sum(heights))), "white")
    draw = ImageDraw.Draw(sheet)
    y = 0
    for imgs, name, count, h in zip(images, class_names, counts, heights, strict=True):
        draw.text((gap, y + 3), f"{name}: {count:,} item{'s' if count != 1 else ''}", fill="black", font=font)
        if len(imgs) == 0:
            draw.text((gap, y + label_h + 2), "(none kept)", fill="gray", font=font)
        for i, img in enumerate(imgs):
            r, c = divmod(i, columns)
            sheet.paste(thumbnail(img, tile), (gap + c * (tile + gap), y + label_h + r * (tile + gap)))
        y += h
    return sheet


def contact_html(
    images: Sequence[np.ndarray],
    class_names: Sequence[str],
    counts: Sequence[int],
    keys: Sequence[Sequence[str]],
    *,
    title: str,
    tile: int = TILE,
) -> str:
    """The same sheet as one self-contained HTML page (tiles inlined as data: URIs, no external asset); each
    tile's alt text and title are its pool key and class, so a reader can look an item up."""
    parts = []
    for imgs, name, count, ks in zip(images, class_names, counts, keys, strict=True):
        tiles = "".join(
            f'<img width={tile} height={tile} alt="{html.escape(k)} · {html.escape(name)}" '
            f'title="{html.escape(k)}" src="data:image/png;base64,{base64.b64encode(png_bytes(img, tile)).decode()}">'
            for img, k in zip(imgs, ks, strict=True)
        )
        parts.append(
            f"<section><h2>{html.escape(name)} <small>{count:,} items</small></h2>"
            f"<div class=grid>{tiles or '<em>none kept</em>'}</div></section>"
        )
    css = (
        "body{font:14px system-ui,sans-serif;margin:20px}h2{font-size:15px;margin:16px 0 6px}small{color:#777}"
        ".grid{display:flex;flex-wrap:wrap;gap:4px}img{image-rendering:pixelated;border:1px solid #ddd}"
    )
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<style>{css}</style></head><body><h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>"
    )
