"""One page per version (``/tasks/{task}/versions/{v}``): what the payload teaches, as pictures.

Per class the label count and a grid of kept pool images (the teacher's most confident first), the candidate
recipes validation compared (and, for any of them or any other version, what changed: items added and
removed per class), the leakage audit's flagged pairs side by side, and what clients reported. Thumbnails
are drawn from the server's own pool copy on first request and kept on disk under a size bound; a thumbnail
route only serves pool items the version itself names, and token-gated tasks show nothing here (the page is
anonymous, like the dashboard).
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.parse
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from plada.server.blobs import BlobStore
from plada.server.html import CSS, accuracy_plot, esc, interval_title, num, pct
from plada.shared.payload import Payload, decode_payload
from plada.shared.pool import Pool
from plada.shared.preview import per_class_items, png_bytes

SHOW_PER_CLASS = 24  # tiles a class shows on the page (the preview keeps 48)
SHOW_CHANGES = 12  # added / removed tiles a class shows in a comparison


class ThumbCache:
    """PNG thumbnails on disk, bounded in total bytes: the least recently read go first. The bound holds per
    process (several API processes may overshoot it by what they wrote since their last scan)."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root, self.max_bytes = Path(root), max_bytes
        self._lock = threading.Lock()
        self._size: int | None = None

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.png"

    def get(self, key: str, make: Callable[[], bytes]) -> bytes:
        path = self._path(key)
        try:
            data = path.read_bytes()
            os.utime(path)  # recently read: kept longest
            return data
        except FileNotFoundError:
            pass
        data = make()
        if self.max_bytes <= 0:
            return data
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        with self._lock:
            if self._size is None:
                self._size = sum(p.stat().st_size for p in self.root.glob("*/*.png"))
            else:
                self._size += len(data)
            if self._size > self.max_bytes:
                self._evict()
        return data

    def _evict(self) -> None:
        files = []
        for p in self.root.glob("*/*.png"):
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            files.append((st.st_mtime, st.st_size, p))
        files.sort()
        total = sum(s for _, s, _ in files)
        target = self.max_bytes * 0.8  # evict in bulk, not one file per request
        for _, size, p in files:
            if total <= target:
                break
            p.unlink(missing_ok=True)
            total -= size
        self._size = total

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob("*/*.png"))


@dataclass
class VersionView:
    """A ready version as the page sees it: decoded payload, preview document, candidates' payloads."""

    payload: Payload
    preview: dict[str, Any] | None
    candidates: dict[str, Payload] = field(default_factory=dict)
    members: set[int] = field(default_factory=set)  # pool items this version may show thumbnails of

    def per_class(self) -> list[list[tuple[int, float | None]]]:
        """Per class (pool index, teacher confidence): the preview's most-confident-first order, or payload
        order for versions built before previews existed."""
        if self.preview is not None:
            return [[(int(i), float(c)) for i, c in top] for top in self.preview["top"]]
        k = len(self.payload.classes)
        return [[(int(i), None) for i in o] for o in per_class_items(self.payload.indices, self.payload.labels, k)]

    def counts(self) -> list[int]:
        return np.bincount(self.payload.labels, minlength=len(self.payload.classes)).tolist()


class VersionViews:
    """Decoded versions by payload sha256 (immutable), a few at a time."""

    def __init__(self, blobs: BlobStore, size: int = 16) -> None:
        self.blobs, self.size = blobs, size
        self._items: OrderedDict[str, VersionView] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, sha: str, payload_bytes: Callable[[], bytes], metrics: dict[str, Any], pool: Pool) -> VersionView:
        with self._lock:
            if sha in self._items:
                self._items.move_to_end(sha)
                return self._items[sha]
        data = self.blobs.get(sha) or payload_bytes()
        payload = decode_payload(data, expected_sha256=sha, layout=pool.layout)
        preview = None
        ref = (metrics.get("preview") or {}).get("sha256")
        raw = self.blobs.get(ref) if isinstance(ref, str) and len(ref) == 64 else None
        if raw is not None:
            preview = json.loads(raw)
        view = VersionView(payload=payload, preview=preview, members=set(payload.indices.tolist()))
        for c in (preview or {}).get("candidates", []):
            cdata = self.blobs.get(c["payload"])
            if cdata is not None:
                view.candidates[c["label"]] = decode_payload(cdata, layout=pool.layout)
                view.members.update(view.candidates[c["label"]].indices.tolist())
        for pair in (preview or {}).get("leakage_pairs", []):
            view.members.add(int(pair["pool_index"]))
        with self._lock:
            self._items[sha] = view
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return view


def thumbnail_png(pool: Pool, index: int, size: int) -> bytes:
    return png_bytes(pool.batch(np.asarray([index]))[0], size)


def _tile(base: str, pool: Pool, index: int, label: str, conf: float | None = None) -> str:
    key = str(pool.manifest.keys[index])
    tip = f"{key} · {label}" + (f" · teacher {100 * conf:.0f} %" if conf is not None else "")
    return (
        f'<img loading=lazy width=64 height=64 class=tile src="{base}/thumbs/{index}.png" '
        f'alt="{esc(key)} · {esc(label)}" title="{esc(tip)}">'
    )


def _cos(v: Any) -> str:
    return "" if v is None else f"{float(v):.3f}"


def _changes(a: Payload, b: Payload) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per class of ``a``: (items in a not in b, items in b not in a), an item being (pool index, label)."""
    out = []
    for c in range(len(a.classes)):
        ia, ib = a.indices[a.labels == c], b.indices[b.labels == c]
        out.append((np.setdiff1d(ia, ib), np.setdiff1d(ib, ia)))
    return out


_PAGE_CSS = """
.grid{display:flex;flex-wrap:wrap;gap:3px;margin:4px 0 10px} img.tile{image-rendering:pixelated;border:1px solid #ddd}
.cls{margin:10px 0} .chosen{font-weight:600} .pair img{width:96px;height:96px;image-rendering:pixelated}
nav a{margin-right:10px} .added{border-left:3px solid #2a8a2a;padding-left:6px}
.removed{border-left:3px solid #b33;padding-left:6px}
"""


def coverage_cell(cov: dict[str, Any] | None) -> str:
    """What a report says of the client's pool copy: identical, or how much of the payload it held."""
    if not cov:
        return "<span class=muted>identical</span>"
    total = int(cov.get("total") or 0)
    used = int(cov.get("exact") or 0) + int(cov.get("reencoded") or 0)
    parts = [f"{k} {int(cov.get(k) or 0):,}" for k in ("reencoded", "missing", "different") if cov.get(k)]
    share = f"{100 * used / total:.1f} %" if total else "–"
    return esc(f"{used:,}/{total:,} used ({share})" + (f"; {', '.join(parts)}" if parts else ""))


def render_version_page(
    *,
    task: str,
    number: int,
    versions: list[int],
    pool: Pool,
    view: VersionView,
    metrics: dict[str, Any],
    size_bytes: int | None,
    reports: list[Any],
    show: int = SHOW_PER_CLASS,
    compare: tuple[str, Payload, str] | None = None,
) -> str:
    """The page's HTML. ``compare`` = (title, the other selection, base URL of its thumbnails)."""
    base = f"/tasks/{esc(task)}/versions/{number}"
    classes = list(view.payload.classes)
    val = metrics.get("validation", {})
    sel = metrics.get("selection", {})
    teacher = metrics.get("teacher", {})
    counts = view.counts()
    nav = " ".join(
        f"<a href='/tasks/{esc(task)}/versions/{v}'{' class=chosen' if v == number else ''}>v{v}</a>" for v in versions
    )
    head = (
        f"<h1>{esc(task)} v{number}</h1><nav><a href='/'>dashboard</a> versions: {nav}</nav>"
        f"<p>{num(size_bytes)} bytes · {num(len(view.payload))} pool items · {len(classes)} classes · "
        f"selection <b>{esc(sel.get('label', '–'))}</b> · teacher {pct(teacher.get('val_accuracy'))} % (val) · "
        f"<span{interval_title(val.get('predicted_interval_95'))}>predicted "
        f"{pct(val.get('predicted_client_accuracy'))} % (val)</span></p>"
    )
    warn = "".join(f"<p class=warn>{esc(w)}</p>" for w in metrics.get("warnings", []))
    # candidates validation compared
    cand_rows = []
    for c in val.get("candidates", []):
        label = c.get("label", "")
        link = (
            f"<a href='{base}?candidate={esc(urllib.parse.quote(label, safe=''))}#changes'>compare</a>"
            if label in view.candidates and label != val.get("chosen")
            else ""
        )
        mark = "✓ shipped" if label == val.get("chosen") else link
        cand_rows.append(
            f"<tr{' class=chosen' if label == val.get('chosen') else ''}><td>{esc(label)}</td>"
            f"<td class=num>{num(c.get('n_kept'))}</td><td class=num>{num(c.get('bytes'))}</td>"
            f"<td class=num>{pct(c.get('val_accuracy'))}{' (screen)' if c.get('screened_out') else ''}</td>"
            f"<td>{mark}</td></tr>"
        )
    candidates = (
        "<h2>Candidates (server validation)</h2><table id=candidates><tr><th>recipe</th><th>items</th>"
        "<th>bytes</th><th>val %</th><th></th></tr>" + "".join(cand_rows) + "</table>"
        if cand_rows
        else "<h2>Candidates</h2><p class=muted>none validated (a fixed selector)</p>"
    )
    points = [
        ("candidate", c["bytes"], c["val_accuracy"], c.get("label", ""))
        for c in val.get("candidates", [])
        if c.get("label") != val.get("chosen") and c.get("bytes")
    ]
    if size_bytes and val.get("predicted_client_accuracy") is not None:
        points.append(("shipped", size_bytes, val["predicted_client_accuracy"], "shipped"))
    points += [("reported", size_bytes or 1, r.accuracy, r.client_id) for r in reports if r.accuracy is not None]
    # per-class grids
    grids = []
    for c, items in enumerate(view.per_class()):
        tiles = "".join(_tile(base, pool, i, classes[c], conf) for i, conf in items[:show])
        more = counts[c] - min(len(items), show)
        grids.append(
            f"<div class=cls id='class-{c}'><h3>{esc(classes[c])} <span class=muted>{counts[c]:,} items"
            f"{f' · showing {min(len(items), show)}' if more > 0 else ''}</span></h3>"
            f"<div class=grid data-class='{esc(classes[c])}'>"
            f"{tiles or '<span class=muted>none kept</span>'}</div></div>"
        )
    # what changed
    changes = ""
    if compare is not None:
        title, other, other_base = compare
        blocks = []
        for c, (added, removed) in enumerate(_changes(view.payload, other)):
            if not len(added) and not len(removed):
                continue
            add_t = "".join(_tile(base, pool, int(i), classes[c]) for i in added[:SHOW_CHANGES])
            rem_t = "".join(_tile(other_base, pool, int(i), classes[c]) for i in removed[:SHOW_CHANGES])
            blocks.append(
                f"<div class=cls><h3>{esc(classes[c])}</h3>"
                f"<div class=added>+{len(added):,} added<div class=grid>{add_t}</div></div>"
                f"<div class=removed>−{len(removed):,} removed<div class=grid>{rem_t}</div></div></div>"
            )
        changes = (
            f"<h2 id=changes>{esc(title)}</h2>"
            + ("".join(blocks) or "<p class=muted>the same items and labels</p>")
            + f"<p><a href='{base}'>close the comparison</a></p>"
        )
    # leakage pairs
    pairs = (view.preview or {}).get("leakage_pairs", [])
    leak = metrics.get("leakage", {})
    if pairs:
        rows = "".join(
            f"<tr class=pair><td><img src='{base}/uploads/{esc(p['upload_png'])}.png' alt='upload image'></td>"
            f"<td><img src='{base}/thumbs/{int(p['pool_index'])}.png' alt='{esc(p.get('pool_key'))}'></td>"
            f"<td>{esc(p.get('kind'))}</td><td class=num>{_cos(p.get('cosine'))}</td>"
            f"<td><code>{esc(p.get('pool_key'))}</code></td></tr>"
            for p in pairs
        )
        leakage = (
            f"<h2>Leakage audit</h2><p>{num(leak.get('exact_duplicates'))} exact and "
            f"{num(leak.get('near_duplicates'))} near duplicates of the upload in the pool "
            f"({esc(leak.get('method', ''))}); "
            f"{'excluded' if leak.get('excluded') else 'not excluded'}. Judge them:</p>"
            "<table id=leakage><tr><th>upload</th><th>pool</th><th>kind</th><th>cosine</th><th>pool key</th></tr>"
            + rows
            + "</table>"
        )
    else:
        leakage = "<h2>Leakage audit</h2><p class=muted>no upload image flagged as a duplicate of a pool item</p>"
    rep_rows = "".join(
        f"<tr><td>{esc(r.client_id)}</td><td>{esc(r.student_arch)}</td><td class=num>{r.epochs}</td>"
        f"<td class=num>{pct(r.accuracy)}</td><td class=num>{num(r.n_test)}</td><td>{coverage_cell(r.coverage)}</td>"
        f"<td>{time.strftime('%Y-%m-%d %H:%M', time.gmtime(r.created_at))}</td></tr>"
        for r in reports
    )
    reported = (
        "<h2>Client reports</h2><table id=reports><tr><th>client</th><th>student</th><th>epochs</th>"
        "<th>accuracy %</th><th>test images</th><th>pool copy</th><th>UTC</th></tr>" + rep_rows + "</table>"
        if rep_rows
        else "<h2>Client reports</h2><p class=muted>none yet</p>"
    )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>{esc(task)} v{number} · plada</title><style>{CSS}{_PAGE_CSS}</style></head><body>"
        f"{head}{warn}<div class=task><div>{candidates}</div><div>{accuracy_plot(points)}</div></div>"
        f"{changes}<h2>Kept pool images per class</h2>{''.join(grids)}{leakage}{reported}</body></html>"
    )
