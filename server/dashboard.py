"""The dashboard at ``/``: one self-contained HTML page (inline CSS, inline JS, server-rendered SVG; no CDN).

Pools, tasks, versions (bytes, chosen selection, teacher / predicted / client-reported accuracy), live job
progress (the page polls ``GET /v1/jobs?active=true``) and, per task, a plot of accuracy against payload
bytes: every validated candidate of every version (grey), the shipped selection at its predicted accuracy
(blue) and what clients reported (orange).
"""

from __future__ import annotations

import html
import math
from typing import Any

from sqlalchemy.orm import Session

from plada.server import repo
from plada.server.auth import ANONYMOUS, may_see
from plada.server.db import TaskRow, VersionRow

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px} h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;margin:6px 0} td,th{border-bottom:1px solid #ddd;padding:4px 10px;text-align:left}
th{background:#f4f4f4;font-weight:600} .num{text-align:right;font-variant-numeric:tabular-nums}
.muted{color:#777} .warn{color:#a15c00} progress{width:220px;vertical-align:middle}
.task{display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start} svg{background:#fff;border:1px solid #ddd}
code{background:#f4f4f4;padding:1px 4px}
"""

_JS = """
// a job appeared or ended: reload to show it, but at most every 15 s (a page that can never match the
// job list, or dozens of jobs starting and ending, must not turn into a reload loop)
function reload(){
  const last = Number(sessionStorage.getItem('plada-reload') || 0);
  if (Date.now() - last < 15000){ setTimeout(poll, 5000); return; }
  sessionStorage.setItem('plada-reload', String(Date.now()));
  location.reload();
}
async function poll(){
  try{
    const r = await fetch('/v1/jobs?active=true&limit=100', {cache:'no-store'});
    const body = await r.json(); const live = new Set();
    for (const j of body.data){
      live.add(String(j.id));
      const row = document.getElementById('job-'+j.id);
      if (!row){ reload(); return; }
      row.querySelector('progress').value = j.progress;
      row.querySelector('.pct').textContent = (100*j.progress).toFixed(0)+' %';
      row.querySelector('.state').textContent = j.state;
      row.querySelector('.msg').textContent = j.message;
    }
    for (const row of document.querySelectorAll('tr.job-active')){
      if (!live.has(row.dataset.job)){ reload(); return; }
    }
  }catch(e){ /* server restarting: try again */ }
  setTimeout(poll, 1000);
}
setTimeout(poll, 1000);
"""


PLOT_REPORTS = 200  # per version
_ACTIVE = ("queued", "running")


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _pct(v: Any) -> str:
    return "–" if v is None else f"{100 * float(v):.1f}"


def _interval_title(iv: Any) -> str:
    """A tooltip with the 95 % interval of a predicted accuracy (older versions have none)."""
    if not (isinstance(iv, list) and len(iv) == 2):
        return ""
    why = "server validation; assumes the client's images resemble the publisher's"
    return f' title="95 % interval {_pct(iv[0])}–{_pct(iv[1])} ({_e(why)})"'


def _num(v: Any) -> str:
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
                + f"<title>{_e(tip)}</title>"
                + close
            )
    legend = [("#bbb", "candidates (server val)"), ("#1f6fd1", "shipped (predicted)"), ("#e8820c", "client reports")]
    for i, (color, text) in enumerate(legend):
        lx = left + 8 + i * 128
        out.append(f'<rect x="{lx}" y="{top + 4}" width="8" height="8" fill="{color}"/>')
        out.append(f'<text x="{lx + 12}" y="{top + 12}" font-size="10">{_e(text)}</text>')
    out.append("</svg>")
    return "".join(out)


def _version_link(task: str, v: VersionRow) -> str:
    """Ready versions link to their page (server/version_page.py): the kept images per class."""
    if v.status != "ready":
        return f"v{v.number}"
    return f"<a href='/tasks/{_e(task)}/versions/{v.number}'>v{v.number}</a>"


def _task_section(session: Session, task: TaskRow) -> str:
    versions: list[VersionRow] = repo.list_versions(session=session, task=task)
    sums = repo.report_summaries(session=session, version_ids=[v.id for v in versions])
    rows, points = [], []
    for v in versions:
        m = v.metrics or {}
        val = m.get("validation", {})
        sel = m.get("selection", {})
        n_rep, _n_acc, mean_acc = sums.get(v.id, (0, 0, None))
        warn = " ".join(m.get("warnings", []))
        rows.append(
            f"<tr><td>{_version_link(task.name, v)}</td><td>{_e(v.status)}</td><td class=num>{_num(v.size_bytes)}</td>"
            f"<td class=num>{_num(v.n_items)}</td><td>{_e(sel.get('label', '–'))}</td>"
            f"<td class=num>{_pct(m.get('teacher', {}).get('val_accuracy'))}</td>"
            f"<td class=num{_interval_title(val.get('predicted_interval_95'))}>"
            f"{_pct(val.get('predicted_client_accuracy'))}</td>"
            f"<td class=num>{_pct(mean_acc)}{f' ({n_rep})' if n_rep else ''}</td>"
            f"<td class=warn>{_e(warn[:160])}</td></tr>"
        )
        for c in val.get("candidates", []):
            if c.get("label") != val.get("chosen"):
                points.append(("candidate", c["bytes"], c["val_accuracy"], f"v{v.number} {c['label']}"))
        if v.size_bytes and val.get("predicted_client_accuracy") is not None:
            tip = f"v{v.number} shipped: {sel.get('label', '')}"
            points.append(("shipped", v.size_bytes, val["predicted_client_accuracy"], tip))
        if v.size_bytes:
            # the plot shows the latest reports only: thousands of points would make the page slow and unreadable
            for r in repo.list_reports(session=session, version=v, limit=PLOT_REPORTS, newest=True):
                if r.accuracy is not None:
                    points.append(("reported", v.size_bytes, r.accuracy, f"v{v.number} {r.client_id}"))
    table = (
        "<table><tr><th>version</th><th>status</th><th>bytes</th><th>items</th><th>selection</th>"
        "<th>teacher % (val)</th><th>predicted % (val)</th><th>reported % (n)</th><th></th></tr>"
        + "".join(rows)
        + "</table>"
    )
    return (
        f'<h3 id="task-{_e(task.name)}">{_e(task.name)} <span class=muted>({len(task.classes)} classes)</span></h3>'
        f'<div class="task"><div>{table}</div><div>{accuracy_plot(points)}</div></div>'
    )


def render_dashboard(session: Session, *, version: str) -> str:
    pools = repo.list_pools(session=session)
    # the page is anonymous: token-gated tasks and their jobs are not shown
    tasks = [t for t in repo.list_tasks(session=session) if may_see(t.access, ANONYMOUS)]
    # every active job (the page's script polls the same 100), then the latest finished ones
    active = repo.list_jobs(session=session, limit=100, active_only=True, public_only=True)
    done = [j for j in repo.list_jobs(session=session, limit=20, public_only=True) if j.state not in _ACTIVE]
    jobs = active + done
    from plada.server.api.views import job_info

    job_rows = []
    ctx = repo.job_contexts(session=session, jobs=jobs)
    for row in jobs:
        j = job_info(session, row, ctx[row.id])
        running = j.state in ("queued", "running")
        job_rows.append(
            f'<tr id="job-{j.id}" data-job="{j.id}" class="{"job-active" if running else "job-done"}">'
            f"<td>{j.id}</td><td>{_e(j.task)} v{j.version}</td><td class=state>{_e(j.state)}</td>"
            f'<td><progress max="1" value="{j.progress:.4f}"></progress> <span class=pct>{100 * j.progress:.0f} %'
            f"</span></td><td class=msg>{_e((j.error.message if j.error else j.message)[:200])}</td></tr>"
        )
    pool_rows = "".join(
        f"<tr><td>{_e(p.name)}</td><td class=num>{p.n_items:,}</td><td><code>{_e(p.pool_id[:16])}…</code></td></tr>"
        for p in pools
    )
    sections = "".join(_task_section(session, t) for t in tasks) or "<p class=muted>No tasks yet.</p>"
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'><title>plada dashboard</title>"
        f"<style>{_CSS}</style></head><body>"
        f"<h1>plada</h1><div class=muted>server {_e(version)} · API docs at <a href='/docs'>/docs</a></div>"
        f"<h2>Jobs</h2><table id=jobs><tr><th>id</th><th>task</th><th>state</th><th>progress</th><th>message</th></tr>"
        + ("".join(job_rows) or "<tr><td colspan=5 class=muted>none</td></tr>")
        + "</table>"
        f"<h2>Pools</h2><table><tr><th>pool</th><th>items</th><th>pool_id</th></tr>{pool_rows}</table>"
        f"<h2>Tasks</h2>{sections}"
        f"<script>{_JS}</script></body></html>"
    )
