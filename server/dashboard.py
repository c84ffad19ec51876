"""The dashboard at ``/``: one self-contained HTML page (inline CSS, inline JS, server-rendered SVG; no CDN).

Pools, tasks, versions (bytes, chosen selection, teacher / predicted / client-reported accuracy), live job
progress (the page polls ``GET /v1/jobs?active=true``) and, per task, a plot of accuracy against payload
bytes: every validated candidate of every version (grey), the shipped selection at its predicted accuracy
(blue) and what clients reported (orange).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from plada.server import repo
from plada.server.auth import ANONYMOUS, may_see
from plada.server.db import ReportRow, TaskRow, VersionRow
from plada.server.html import CSS, accuracy_plot, esc, interval_title, num, pct

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


def _version_link(task: str, v: VersionRow) -> str:
    """Ready versions link to their page (server/version_page.py): the kept images per class."""
    if v.status != "ready":
        return f"v{v.number}"
    return f"<a href='/tasks/{esc(task)}/versions/{v.number}'>v{v.number}</a>"


def _task_section(
    task: TaskRow,
    versions: list[VersionRow],
    sums: dict[int, tuple[int, int, float | None]],
    reports: dict[int, list[ReportRow]],
) -> str:
    rows, points = [], []
    for v in versions:
        m = v.metrics or {}
        val = m.get("validation", {})
        sel = m.get("selection", {})
        n_rep, _n_acc, mean_acc = sums.get(v.id, (0, 0, None))
        warn = " ".join(m.get("warnings", []))
        rows.append(
            f"<tr><td>{_version_link(task.name, v)}</td><td>{_status(v.status)}</td>"
            f"<td class=num>{num(v.size_bytes)}</td>"
            f"<td class=num>{num(v.n_items)}</td><td>{esc(sel.get('label', '–'))}</td>"
            f"<td class=num>{pct(m.get('teacher', {}).get('val_accuracy'))}</td>"
            f"<td class=num{interval_title(val.get('predicted_interval_95'))}>"
            f"{pct(val.get('predicted_client_accuracy'))}</td>"
            f"<td class=num>{pct(mean_acc)}{f' ({n_rep})' if n_rep else ''}</td>"
            f"<td class=warn>{esc(warn[:160])}</td></tr>"
        )
        for c in val.get("candidates", []):
            if c.get("label") != val.get("chosen"):
                points.append(("candidate", c["bytes"], c["val_accuracy"], f"v{v.number} {c['label']}"))
        if v.size_bytes and val.get("predicted_client_accuracy") is not None:
            tip = f"v{v.number} shipped: {sel.get('label', '')}"
            points.append(("shipped", v.size_bytes, val["predicted_client_accuracy"], tip))
        if v.size_bytes:
            # the plot shows the latest reports only: thousands of points would make the page slow and unreadable
            for r in reports.get(v.id, []):
                assert r.accuracy is not None  # latest_reports keeps those with an accuracy
                points.append(("reported", v.size_bytes, r.accuracy, f"v{v.number} {r.client_id}"))
    table = (
        "<table><tr><th>version</th><th>status</th><th>bytes</th><th>items</th><th>selection</th>"
        "<th>teacher % (val)</th><th>predicted % (val)</th><th>reported % (n)</th><th></th></tr>"
        + "".join(rows)
        + "</table>"
    )
    return (
        f'<h3 id="task-{esc(task.name)}">{esc(task.name)} <span class=muted>({len(task.classes)} classes)</span></h3>'
        f'<div class="task"><div>{table}</div><div>{accuracy_plot(points)}</div></div>'
    )


def _status(status: str) -> str:
    if status == "broken":  # its payload blob was lost or damaged: never served again, latest skips it
        return "<strong title='payload lost or damaged on the server; kept in the blob quarantine'>broken</strong>"
    return esc(status)


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
            f"<td>{j.id}</td><td>{esc(j.task)} v{j.version}</td><td class=state>{esc(j.state)}</td>"
            f'<td><progress max="1" value="{j.progress:.4f}"></progress> <span class=pct>{100 * j.progress:.0f} %'
            f"</span></td><td class=msg>{esc((j.error.message if j.error else j.message)[:200])}</td></tr>"
        )
    pool_rows = "".join(
        f"<tr><td>{esc(p.name)}</td><td class=num>{p.n_items:,}</td><td><code>{esc(p.pool_id[:16])}…</code></td></tr>"
        for p in pools
    )
    versions = repo.versions_of(session=session, tasks=tasks)  # every task's versions and reports: three queries
    ids = [v.id for vs in versions.values() for v in vs]
    sums = repo.report_summaries(session=session, version_ids=ids)
    reports = repo.latest_reports(session=session, version_ids=ids, limit_each=PLOT_REPORTS)
    sections = "".join(_task_section(t, versions[t.id], sums, reports) for t in tasks)
    sections = sections or "<p class=muted>No tasks yet.</p>"
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'><title>plada dashboard</title>"
        f"<style>{CSS}</style></head><body>"
        f"<h1>plada</h1><div class=muted>server {esc(version)} · API docs at <a href='/docs'>/docs</a></div>"
        f"<h2>Jobs</h2><table id=jobs><tr><th>id</th><th>task</th><th>state</th><th>progress</th><th>message</th></tr>"
        + ("".join(job_rows) or "<tr><td colspan=5 class=muted>none</td></tr>")
        + "</table>"
        f"<h2>Pools</h2><table><tr><th>pool</th><th>items</th><th>pool_id</th></tr>{pool_rows}</table>"
        f"<h2>Tasks</h2>{sections}"
        f"<script>{_JS}</script></body></html>"
    )
