"""The pipeline's records: what ``prepare`` hands to ``finish`` (``Prepared``), each candidate's payload
(``Built``) and the whole result (``PipelineResult``). A module of their own so that ``run`` (which makes
them) and ``report`` (which reads them) both import them and not each other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from plada.server.pipeline.clusters import feature_strata
from plada.server.pipeline.leakage import LeakageReport
from plada.server.pipeline.selection import ScoreInputs, create_selector, diversified_order
from plada.server.pipeline.teacher import TeacherOutput
from plada.server.pipeline.validate import Candidate, ProxyConfig
from plada.shared.payload import Payload
from plada.shared.pool import Pool


@dataclass(frozen=True)
class PipelineResult:
    payload: Payload
    data: bytes
    sha256: str
    metrics: dict[str, Any]
    built: list[Built] = field(default_factory=list)  # every candidate's payload (the benchmark trains on them)
    attachments: dict[str, bytes] = field(default_factory=dict)  # sha256 → bytes: the preview and what it names


@dataclass
class Prepared:
    """Everything before the budget is applied: the teacher's view of the pool, the split, the audit. One
    ``Prepared`` serves any number of budgets and candidate sets (the benchmark reuses it)."""

    pool: Pool
    x: np.ndarray
    y: np.ndarray
    tr: np.ndarray
    va: np.ndarray
    teacher: TeacherOutput
    labels: np.ndarray
    leak: LeakageReport
    inputs: ScoreInputs
    seconds: float
    domain: dict[str, Any] | None = None  # how typical the upload looks to the pool (leakage.domain_typicality)
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    strata: np.ndarray | None = None
    proxy_cache: dict[tuple[str, ProxyConfig], float] = field(default_factory=dict)  # (payload sha, cfg) → acc

    def scores_of(self, cand: Candidate) -> np.ndarray:
        """The candidate's relevance scores, computed once per selector *and options* (a kNN with k = 1 is
        not the default kNN)."""
        key = cand.selector + json.dumps(cand.options, sort_keys=True, default=str) if cand.options else cand.selector
        if key not in self.scores:
            self.scores[key] = np.asarray(create_selector(cand.selector, **cand.options)(self.inputs), np.float64)
        return self.scores[key]

    def order_of(self, cand: Candidate, count: int, eligible: np.ndarray) -> np.ndarray:
        sc = self.scores_of(cand)
        if cand.diversity > 0 and self.teacher.pool_features is not None:
            if self.strata is None:
                self.strata = feature_strata(
                    self.teacher.pool_features, seed=self.inputs.seed, stream=self.inputs.stream
                )
            order = diversified_order(sc, self.labels, self.strata, count, breadth=cand.diversity)
        else:
            order = np.argsort(sc, kind="stable")
        return order if eligible.all() else order[eligible[order]]


@dataclass
class Built:
    candidate: Candidate
    payload: Payload
    data: bytes
    val_accuracy: float | None = None
