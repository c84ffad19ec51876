"""The client daemon: follow tasks, train each new version exactly once, keep going when the server is down.

State (which payload sha256 was trained, per task) lives in ``<out>/agent-state.json``, written atomically
after each finished training, so a restarted agent neither retrains nor skips a version. Several agents may
share one ``--out``: a task is trained under a per-task lock file and the state is re-read under it, so no two
agents train the same version (POSIX ``flock``; the locks go away with the process that held them).
"""

from __future__ import annotations

import fcntl
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plada.client.api import PladaClient
from plada.client.session import check_task_name
from plada.client.train import TrainConfig, load_eval_split, train_student
from plada.shared.cli import safe_text
from plada.shared.errors import ClientError, PladaError, ServerResponseError, VerificationError
from plada.shared.files import atomic_write_bytes
from plada.shared.pool import Pool

log = logging.getLogger("plada.agent")
STATE_FILE = "agent-state.json"
MAX_BACKOFF_S = 300.0


@contextmanager
def _flock(path: Path, *, wait: bool) -> Iterator[bool]:
    """An exclusive lock on ``path`` for the block; yields False at once when another holder has it and
    ``wait`` is off."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass
class AgentConfig:
    tasks: list[str]
    out_dir: Path
    poll_s: float = 30.0
    train: TrainConfig = field(default_factory=TrainConfig)
    eval_splits: dict[str, Path] = field(default_factory=dict)
    report: bool = True  # post each training result to the server (POST .../versions/{v}/reports)
    wait_s: float = 0.0  # > 0: long-poll the latest pointer (the server holds its 304 up to this long)
    client_id: str = field(default_factory=socket.gethostname)


class Agent:
    def __init__(self, client: PladaClient, pool: Pool, config: AgentConfig) -> None:
        for task in config.tasks:
            check_task_name(task)  # it names a folder under --out
        self.client, self.pool, self.config = client, pool, config
        self.state_path = config.out_dir / STATE_FILE
        self.state: dict[str, Any] = self._load_state()
        self._stop = threading.Event()

    def _load_state(self) -> dict[str, Any]:
        try:
            state = dict(json.loads(self.state_path.read_text()))
        except (OSError, ValueError, TypeError):
            return {"trained": {}}
        return state if isinstance(state.get("trained"), dict) else {"trained": {}}

    def _save_state(self) -> None:
        atomic_write_bytes(self.state_path, json.dumps(self.state, indent=2).encode())

    def _trained(self, task: str) -> list[str]:
        """What any agent on this ``--out`` has trained for ``task`` (read from disk: another may have)."""
        self.state = self._load_state()
        return list(self.state["trained"].get(task, []))

    def _mark_trained(self, task: str, sha: str) -> None:
        with _flock(self.config.out_dir / ".agent-state.lock", wait=True):
            self.state = self._load_state()
            self.state["trained"].setdefault(task, []).append(sha)
            self._save_state()

    def stop(self, *_: Any) -> None:
        self._stop.set()

    def poll_task(self, task: str, on_result: Callable[[dict[str, Any]], None] | None = None) -> bool:
        """Train the task's latest version if it is new; True when something was trained."""
        payload = self.client.fetch(task, pool=self.pool, wait=self.config.wait_s)
        sha = payload.sha256
        assert sha is not None
        if sha in self._trained(task):
            return False
        with _flock(self.config.out_dir / task / ".train.lock", wait=False) as mine:
            if not mine:
                log.info("task %s: another agent on this --out is training it; skipping this round", task)
                return False
            if sha in self._trained(task):  # the other agent finished it while we fetched
                return False
            log.info("task %s: new version %d (%d items), training", task, payload.version, len(payload))
            split = None
            if task in self.config.eval_splits:
                split = load_eval_split(self.config.eval_splits[task], list(payload.classes), self.pool.image_shape)
            out = self.config.out_dir / task / f"v{payload.version}"
            metrics = train_student(payload, self.pool, out, self.config.train, eval_split=split)
            self._mark_trained(task, sha)
            acc = metrics.get("test_accuracy")
            cov = metrics.get("coverage")
            log.info(
                "task %s v%d: trained in %.0f s (%s)%s; run in %s",
                task,
                payload.version,
                float(metrics.get("wall_s", 0.0)),
                f"test accuracy {100 * acc:.1f} %" if acc is not None else "no --eval split: no accuracy",
                f", {cov['used']:,} of {cov['total']:,} items in the local copy" if cov else "",
                out,
            )
        if self.config.report:
            self._report(task, payload.version, metrics)
        if on_result:
            on_result(metrics)
        return True

    def _report(self, task: str, version: int, metrics: dict[str, Any]) -> None:
        """Best effort: a server that cannot take the report must not make the client retrain."""
        try:
            self.client.report(
                task,
                version,
                {
                    "client_id": self.config.client_id[:128] or "client",
                    "student_arch": student_label(self.config.train, metrics),
                    "epochs": self.config.train.epochs,
                    "accuracy": metrics.get("test_accuracy"),
                    "n_test": metrics.get("n_test"),
                    "wall_s": float(metrics.get("wall_s", 0.0)),
                    "extra": {"n_items": metrics.get("n_items"), "device": metrics.get("device")},
                    "coverage": _coverage(metrics),
                },
            )
            log.info("task %s v%d: reported to the server", task, version)
        except PladaError as exc:
            log.warning("task %s v%d: could not report the result: %s", task, version, exc.message)

    def run(self, *, max_rounds: int | None = None) -> int:
        """Poll every task each round; returns the number of trainings done."""
        done, rounds = 0, 0
        backoff = 1.0
        while not self._stop.is_set():
            ok = True
            for task in self.config.tasks:
                try:
                    done += int(self.poll_task(task))
                except ServerResponseError as exc:
                    if exc.problem_code in ("task_not_found", "version_not_found", "version_not_ready"):
                        log.info("task %s: nothing to train yet (%s)", task, exc.problem_code)
                    else:  # a broken or hostile answer: log it, back off, try again next round
                        ok = False
                        log.warning("task %s: bad answer from the server: %s", task, safe_text(exc.message))
                except VerificationError as exc:
                    ok = False
                    log.error("task %s: refused payload: %s: %s", task, exc.code, safe_text(exc.message))
                except ClientError as exc:
                    ok = False
                    log.warning("server unreachable, will retry: %s", safe_text(exc.message))
                except PladaError as exc:
                    ok = False
                    log.error("task %s: refused payload: %s: %s", task, exc.code, safe_text(exc.message))
                except Exception as exc:  # never exit on one bad round (training bugs included): log, back off
                    ok = False  # one line (the answer may be hostile); the traceback at debug level only
                    log.error("task %s: round failed: %s: %s", task, type(exc).__name__, safe_text(str(exc), 300))
                    log.debug("task %s: the failed round's traceback", task, exc_info=True)
            rounds += 1
            if max_rounds is not None and rounds >= max_rounds:
                break
            backoff = 1.0 if ok else min(backoff * 2, MAX_BACKOFF_S)
            self._stop.wait(self.config.poll_s if ok else min(backoff, max(self.config.poll_s, 1.0) * 10))
        return done


def _coverage(metrics: dict[str, Any]) -> dict[str, int] | None:
    """The report's view of the run's coverage (an attached copy); None on an identical pool."""
    cov = metrics.get("coverage")
    if not cov:
        return None
    return {k: int(cov[k]) for k in ("total", "exact", "reencoded", "different", "missing")}


def student_label(cfg: TrainConfig, metrics: dict[str, Any]) -> str:
    """What the dashboard shows for a report: the arch, and how it was trained when not from scratch."""
    arch = str(metrics.get("config", {}).get("arch", cfg.arch))
    if metrics.get("config", {}).get("head_only"):
        return f"{arch} (head-only)"
    return f"{arch} (pretrained)" if cfg.pretrained else arch
