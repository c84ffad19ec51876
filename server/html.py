"""HTML pieces the server's pages share (the dashboard and the version pages): one stylesheet, escaping and
number formats, and the accuracy-against-bytes SVG plot. Self-contained: no CDN, no template engine.
"""

from __future__ import annotations

import base64
import html
import math
from typing import Any

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px} h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;margin:6px 0} td,th{border-bottom:1px solid #ddd;padding:4px 10px;text-align:left}
th{background:#f4f4f4;font-weight:600} .num{text-align:right;font-variant-numeric:tabular-nums}
.muted{color:#777} .warn{color:#a15c00} progress{width:220px;vertical-align:middle}
.task{display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start} svg{background:#fff;border:1px solid #ddd}
code{background:#f4f4f4;padding:1px 4px}
"""


def esc(v: Any) -> str:
    return html.escape(str(v), quote=True)


def pct(v: Any) -> str:
    return "–" if v is None else f"{100 * float(v):.1f}"


def interval_title(iv: Any) -> str:
    """A tooltip with the 95 % interval of a predicted accuracy (older versions have none)."""
    if not (isinstance(iv, list) and len(iv) == 2):
        return ""
    why = "server validation; assumes the client's images resemble the publisher's"
    return f' title="95 % interval {pct(iv[0])}–{pct(iv[1])} ({esc(why)})"'


def num(v: Any) -> str:
    return "–" if v is None else f"{int(v):,}"


def accuracy_plot(points: list[tuple[str, float, float, str]], *, width: int = 420, height: int = 260) -> str:
    """SVG scatter of (series, bytes, accuracy, tooltip); x is log-scaled bytes, y is accuracy in %."""
    left, right, top, bottom = 48, 26, 12, 36
    pw, ph = width - left - right, height - top - bottom
    xs = [b for _, b, _, _ in points if b > 0]
    lo, hi = (min(xs), max(xs)) if xs else (100.0, 10_000.0)
    lo, hi = 10 ** math.floor(math.log10(lo)), 10 ** math.ceil(math.log10(hi))
    if hi <= lo:
        hi = lo * 10

    def x(b: float) -> float:
        return left + pw * (math.log10(max(b, lo)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))

    def y(a: float) -> float:
        return top + ph * (1.0 - min(max(a, 0.0), 1.0))

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="accuracy against payload bytes">'
    ]
    for a in (0.0, 0.25, 0.5, 0.75, 1.0):
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(a):.1f}" y2="{y(a):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 6}" y="{y(a) + 4:.1f}" font-size="11" text-anchor="end">{int(a * 100)}</text>')
    decade = lo
    while decade <= hi:
        out.append(f'<line x1="{x(decade):.1f}" x2="{x(decade):.1f}" y1="{top}" y2="{top + ph}" stroke="#eee"/>')
        label = f"{decade / 1000:g} KB" if decade >= 1000 else f"{decade:g} B"
        out.append(f'<text x="{x(decade):.1f}" y="{top + ph + 16}" font-size="11" text-anchor="middle">{label}</text>')
        decade *= 10
    out.append(
        f'<text x="{left + pw / 2}" y="{height - 4}" font-size="11" text-anchor="middle">payload bytes</text>'
        f'<text x="12" y="{top + ph / 2}" font-size="11" text-anchor="middle" '
        f'transform="rotate(-90 12 {top + ph / 2})">accuracy %</text>'
    )
    style = {
        "candidate": ('<circle cx="{x}" cy="{y}" r="3.5" fill="#bbb" class="pt-candidate">', "</circle>"),
        "shipped": ('<circle cx="{x}" cy="{y}" r="5" fill="#1f6fd1" class="pt-shipped">', "</circle>"),
        "reported": ('<rect x="{x0}" y="{y0}" width="9" height="9" fill="#e8820c" class="pt-reported">', "</rect>"),
    }
    for series in ("candidate", "shipped", "reported"):
        for s, b, a, tip in points:
            if s != series:
                continue
            open_, close = style[s]
            px, py = x(b), y(a)
            out.append(
                open_.format(x=f"{px:.1f}", y=f"{py:.1f}", x0=f"{px - 4.5:.1f}", y0=f"{py - 4.5:.1f}")
                + f"<title>{esc(tip)}</title>"
                + close
            )
    legend = [("#bbb", "candidates (server val)"), ("#1f6fd1", "shipped (predicted)"), ("#e8820c", "client reports")]
    for i, (color, text) in enumerate(legend):
        lx = left + 8 + i * 128
        out.append(f'<rect x="{lx}" y="{top + 4}" width="8" height="8" fill="{color}"/>')
        out.append(f'<text x="{lx + 12}" y="{top + 12}" font-size="10">{esc(text)}</text>')
    out.append("</svg>")
    return "".join(out)


# The pages' icon (a 32 px "P" tile), so a browser's automatic /favicon.ico is not a 404 in every console.
FAVICON_ICO = base64.b64decode(
    "AAABAAEAICAAAAAAIADYAAAAFgAAAIlQTkcNChoKAAAADUlIRFIAAAAgAAAAIAgGAAAAc3p69AAAAJ9JREFUeJxjYBhgwIhNUDX59X9aWHZ7ri"
    "iGfUz0shyX2UyEFNDaEUy4JOjlCCZ6W47uCIw0QG/AQoyiW3NESDZYLeUNUeoGPARGHTDgDiAqEWIDyImMnEQKA0M3BCjxNTIY8BAYdQBVcgElYM"
    "BDYNQBow4YdQBR5QC18jw2wMTAgL3HQmsAs5MJXYCelqM4gF6OQLcDIxHS0hEDEdUEAQAdAi68ah76+gAAAABJRU5ErkJggg=="
)
