"""``/metrics`` in the Prometheus text format, and one log line per request.

Request counts and latencies are kept per API process by a pure ASGI middleware (labels: method, the route's
path template — never the raw path, so task names do not become label values — and status). Job and worker
figures are read from the database at scrape time, so every API replica reports the same queue whichever
worker processes ran the jobs: queue depth by state, finished jobs by outcome with their summed durations
(created → finished), and each busy worker's last heartbeat. Idle workers write nothing to the database, so
they do not appear.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from plada.server.db import JobRow, VersionRow, now

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
log = logging.getLogger("plada.request")


class Metrics:
    """One registry per app (several apps in one process, as in tests, never collide)."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "plada_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "plada_http_request_duration_seconds",
            "time to answer, by route",
            ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.payload_bytes = Counter(
            "plada_payload_bytes_served", "payload bytes sent (200 answers)", registry=self.registry
        )
        self.broken_versions = Counter(
            "plada_versions_marked_broken",
            "versions found with a missing or damaged payload blob by this process (marked broken)",
            registry=self.registry,
        )
        self.registry.register(_JobCollector(factory))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _JobCollector(Collector):
    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("plada_jobs", "jobs by state (queued and running: the queue)", labels=["state"])
        done = CounterMetricFamily("plada_jobs_finished", "jobs that ended, by outcome", labels=["state"])
        dur = CounterMetricFamily(
            "plada_jobs_finished_duration_seconds", "summed time from publish to end, by outcome", labels=["state"]
        )
        beat = GaugeMetricFamily(
            "plada_worker_last_heartbeat_timestamp_seconds", "a busy worker's last heartbeat", labels=["worker"]
        )
        lease = GaugeMetricFamily("plada_worker_lease_seconds_left", "a busy worker's lease left", labels=["worker"])
        versions = GaugeMetricFamily("plada_versions", "versions by status (broken: payload lost)", labels=["status"])
        counts: dict[str, tuple[int, float]] = {}
        with self.factory() as s:
            q = select(JobRow.state, func.count(JobRow.id), func.sum(JobRow.updated_at - JobRow.created_at))
            for state, n, total in s.execute(q.group_by(JobRow.state)):
                counts[str(state)] = (int(n), float(total or 0.0))
            q2 = select(JobRow.worker_id, func.max(JobRow.updated_at), func.max(JobRow.lease_until))
            busy = s.execute(q2.where(JobRow.state == "running").group_by(JobRow.worker_id)).all()
            by_status = dict(
                s.execute(select(VersionRow.status, func.count(VersionRow.id)).group_by(VersionRow.status)).all()
            )
        for st in ("pending", "ready", "failed", "cancelled", "broken"):
            versions.add_metric([st], int(by_status.get(st, 0)))
        for state in ("queued", "running"):
            depth.add_metric([state], counts.get(state, (0, 0.0))[0])
        for state in ("succeeded", "failed", "cancelled"):
            n, total = counts.get(state, (0, 0.0))
            done.add_metric([state], n)
            dur.add_metric([state], total)
        t = now()
        for worker, last, until in busy:
            beat.add_metric([str(worker)], float(last or 0.0))
            lease.add_metric([str(worker)], max(0.0, float(until or t) - t))
        yield from (depth, done, dur, beat, lease, versions)


class RequestMetrics:
    """Pure ASGI (no thread-pool hop, no body buffering): counts, times and, with JSON logs, logs a line."""

    def __init__(self, app: ASGIApp, metrics: Metrics, log_requests: bool = False) -> None:
        self.app, self.metrics, self.log_requests = app, metrics, log_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or (
                "static" if scope["path"].startswith("/static") else "unmatched"
            )
            elapsed = time.perf_counter() - t0
            self.metrics.requests.labels(scope["method"], template, str(status[0])).inc()
            self.metrics.latency.labels(scope["method"], template).observe(elapsed)
            if self.log_requests:
                fields: dict[str, Any] = {
                    "method": scope["method"],
                    "route": template,
                    "path": scope["path"],
                    "status": status[0],
                    "ms": round(elapsed * 1000, 2),
                }
                log.info("%s %s %s", scope["method"], scope["path"], status[0], extra={"fields": fields})
