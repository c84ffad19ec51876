"""The worker process: claims jobs from the database and runs the pipeline. Never imported by the web app.

Run it as ``plada-server worker``. Several may run against one database; leases keep them apart.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from plada.server import jobs
from plada.server.blobs import BlobStore
from plada.server.db import init_db, make_engine
from plada.server.pipeline.run import run_pipeline
from plada.server.pipeline.teacher_cache import TeacherCache
from plada.server.publishing import sweep_finished_uploads
from plada.server.settings import Settings
from plada.server.uploads import load_upload
from plada.shared import nn as pnn
from plada.shared.errors import JobCancelledError, PladaError
from plada.shared.pool import Pool, open_pool
from plada.shared.schemas import TaskSpec
from plada.shared.signing import load_or_create_key

log = logging.getLogger("plada.worker")
_SWEEP_S = 60.0  # how often an idle worker deletes expired uploads


def _fields(ev: dict[str, Any], event: str, **more: Any) -> dict[str, Any]:
    """Structured fields of a job event (JSON logs show them; text logs keep the message)."""
    return {"fields": ev | {"event": event} | more}


class _Heartbeat:
    """Extends the lease every lease/3 seconds and carries the latest progress to the database."""

    def __init__(self, factory: sessionmaker[Session], job: jobs.ClaimedJob, worker_id: str, lease_s: float) -> None:
        self.factory, self.job, self.worker_id, self.lease_s = factory, job, worker_id, lease_s
        self.progress: tuple[float, str] | None = None
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job.id}", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def report(self, fraction: float, message: str) -> None:
        """The pipeline's progress callback: also where a cancelled (or lost) job stops."""
        if self.lost:
            raise JobCancelledError(f"job {self.job.id} was cancelled or lost its lease; stopping")
        self.progress = (fraction, message)

    def _run(self) -> None:
        interval = min(self.lease_s / 3, 0.5)
        last_lease = 0.0
        sent: tuple[float, str] | None = None
        while not self._stop.wait(interval):
            cur = self.progress
            if cur != sent or time.monotonic() - last_lease > self.lease_s / 3:
                ok = jobs.heartbeat(
                    self.factory,
                    job_id=self.job.id,
                    worker_id=self.worker_id,
                    lease_s=self.lease_s,
                    progress=cur[0] if cur else None,
                    message=cur[1] if cur else None,
                )
                sent, last_lease = cur, time.monotonic()
                if not ok:
                    self.lost = True
                    return


class Worker:
    def __init__(self, settings: Settings, *, worker_id: str | None = None) -> None:
        self.settings = settings
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.factory = init_db(make_engine(settings.database_url))
        self.config = settings.run_config()  # device, executor, weights: passed to every run, never via os.environ
        assert settings.signing_key is not None
        self.signing_key = load_or_create_key(settings.signing_key)
        self._pools: dict[str, Pool] = {}
        self.cache = TeacherCache(settings.data_dir / "cache" / "teachers", settings.teacher_cache_bytes)
        assert settings.blob_dir is not None
        self.blobs = BlobStore(settings.blob_dir)
        self._stop = threading.Event()

    def stop(self, *_: Any) -> None:
        self._stop.set()

    def _pool(self, path: str) -> Pool:
        """Opened once per manifest version: a re-clustered pool must not be coded in a stale layout."""
        key = f"{path}@{(Path(path) / 'manifest.npz').stat().st_mtime_ns}"
        if key not in self._pools:
            self._pools = {key: open_pool(Path(path))} | {
                k: v for k, v in self._pools.items() if k.split("@")[0] != path
            }
        return self._pools[key]

    def run_once(self) -> bool:
        """Claim and process one job; False when the queue was empty."""
        job = jobs.claim_job(self.factory, worker_id=self.worker_id, lease_s=self.settings.job_lease_s)
        if job is None:
            return False
        ev = {"job": job.id, "task": job.task, "version": job.version, "attempt": job.attempt}
        log.info(
            "job %s: %s v%s (attempt %s)", job.id, job.task, job.version, job.attempt, extra=_fields(ev, "started")
        )
        try:
            with _Heartbeat(self.factory, job, self.worker_id, self.settings.job_lease_s) as hb:
                spec = TaskSpec.model_validate(job.spec)
                x, y = load_upload(Path(job.data_path))
                pool = self._pool(job.pool_path)
                result = run_pipeline(
                    pool, x, y, spec, version=job.version, config=self.config, progress=hb.report, cache=self.cache
                )
                metrics = result.metrics | {"worker": self.worker_id, "attempt": job.attempt}
            if hb.lost:
                log.warning("job %s: lease lost; result discarded", job.id, extra=_fields(ev, "lost"))
                return True
            for extra in result.attachments.values():  # the version page's preview and the blobs it names
                self.blobs.put(extra)
            self.blobs.put(result.data)  # before the row says ready: a reader never finds a ready version without bytes
            ok = jobs.complete_job(
                self.factory,
                job=job,
                worker_id=self.worker_id,
                payload=result.data,
                sha256=result.sha256,
                signature=self.signing_key.sign(result.sha256),
                n_items=len(result.payload),
                metrics=metrics,
                message="done; warning: " + " ".join(result.metrics["warnings"])
                if result.metrics.get("warnings")
                else "done",
            )
            log.info(
                "job %s: %s (%d bytes, %d items)",
                job.id,
                "published" if ok else "lost lease",
                len(result.data),
                len(result.payload),
                extra=_fields(ev, "published" if ok else "lost", bytes=len(result.data), items=len(result.payload)),
            )
        except JobCancelledError:
            log.info(
                "job %s: cancelled (or lease lost) while running; stopped, nothing written",
                job.id,
                extra=_fields(ev, "cancelled"),
            )
        except PladaError as exc:
            state = jobs.fail_job(
                self.factory, job=job, worker_id=self.worker_id, code=exc.code, message=exc.message, retry=False
            )
            log.error(
                "job %s: %s (%s): %s", job.id, state, exc.code, exc.message, extra=_fields(ev, state, code=exc.code)
            )
        except Exception as exc:  # the boundary: any other failure becomes a retryable job failure
            state = jobs.fail_job(
                self.factory,
                job=job,
                worker_id=self.worker_id,
                code="pipeline_failed",
                # publishers read this: no internal reprs or paths (the worker's log has the traceback)
                message=f"internal error in the pipeline ({type(exc).__name__}); the worker's log has the details",
                retry=True,
            )
            log.exception("job %s: %s", job.id, state, extra=_fields(ev, state, code="pipeline_failed"))
        return True

    def sweep_uploads(self) -> None:
        try:
            gone = sweep_finished_uploads(self.factory, self.settings.upload_retention_s)
        except Exception as exc:  # house-keeping must never stop a worker (e.g. the database restarting)
            log.warning("upload sweep failed: %s", type(exc).__name__)
            return
        if gone:
            log.info("deleted %d upload(s) of finished jobs (PLADA_UPLOAD_RETENTION_S)", len(gone))

    def run(self, *, once: bool = False, max_idle_s: float | None = None) -> None:
        """Process jobs until stopped (SIGTERM/SIGINT), or one job with ``once``."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)
        pnn.set_threads()
        np.seterr(over="ignore")
        idle_since = time.monotonic()
        swept = 0.0
        log.info("worker %s ready (device %s, executor %s)", self.worker_id, self.config.device, self.config.executor)
        while not self._stop.is_set():
            if time.monotonic() - swept > _SWEEP_S:
                swept = time.monotonic()
                self.sweep_uploads()
            if self.run_once():
                idle_since = time.monotonic()
                if self.settings.upload_retention_s == 0:
                    self.sweep_uploads()
                if once:
                    return
                continue
            if max_idle_s is not None and time.monotonic() - idle_since > max_idle_s:
                return
            self._stop.wait(self.settings.worker_poll_s)
