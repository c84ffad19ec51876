"""The pipeline's records: what ``prepare`` hands to ``finish`` (``Prepared``), each candidate's payload
(``Built``) and the whole result (``PipelineResult``). A module of their own so that ``run`` (which makes
them) and ``report`` (which reads them) both import them and not each other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from plada.server.pipeline import scoring
from plada.server.pipeline.clusters import assign_strata, strata_centers
from plada.server.pipeline.leakage import LeakageReport
from plada.server.pipeline.selection import (
    ScoreInputs,
    at_risk,
    create_selector,
    diversified_order,
    reachable,
    rescored,
)
from plada.server.pipeline.teacher import TeacherOutput
from plada.server.pipeline.validate import Candidate, ProxyConfig
from plada.shared.payload import Payload
from plada.shared.pool import Pool

# the kNN items rescored on full-width rows (see Prepared.scores_at): first this many times the keep, then every
# row whose estimate could still beat the keep's boundary, for at most this many rounds and this many × the keep
RESCORE_REACH = 2.0
RESCORE_ROUNDS = 4
RESCORE_MOST = 5.0


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
    fine: dict[str, np.ndarray] = field(default_factory=dict)  # selector key → full-width kNN scores (NaN: not yet)
    last_rescored: tuple[str, int, np.ndarray] | None = None
    strata: np.ndarray | None = None  # (N,) int32, −1 where not yet assigned
    centers: np.ndarray | None = None
    proxy_cache: dict[tuple[str, ProxyConfig], float] = field(default_factory=dict)  # (payload sha, cfg) → acc

    def scores_of(self, cand: Candidate) -> np.ndarray:
        """The candidate's relevance scores, computed once per selector *and options* (a kNN with k = 1 is
        not the default kNN)."""
        key = self._key(cand)
        if key not in self.scores:
            self.scores[key] = np.asarray(create_selector(cand.selector, **cand.options)(self.inputs), np.float64)
        return self.scores[key]

    def scores_at(self, cand: Candidate, count: int, *, refine: bool = True) -> np.ndarray:
        """The scores a keep of ``count`` ranks by. On a compressed index with its full-width rows kept, the kNN
        scores come from the survey's projected rows; the items a keep of ``count`` could reach (``reachable``,
        ``RESCORE_REACH``× over, then every row ``at_risk`` of beating the keep's boundary on what the rescored
        rows show of the projection's error; at most ``RESCORE_MOST``× the keep) are scored again on their
        full-width rows and ranked by those: a gather of a few × ``count`` rows, not a pass. On the photo world
        that is 2.7–4.2× the keep and the full index's selection exactly (24 cells); where the cap binds (the
        synthetic scale pool: 0.9 % of a 1 % keep differs) it is close to it.
        ``refine=False``: the projected ranking (the byte-budget search's probes at large counts)."""
        sc = self.scores_of(cand)
        pool_full, targets = self.inputs.fit_features, self.inputs.fit_targets
        if cand.selector != "knn" or not refine or pool_full is None or targets is None:
            return sc
        key = self._key(cand)
        if self.last_rescored is not None and self.last_rescored[:2] == (key, count):
            return self.last_rescored[2]  # build and order_of both ask, one after the other
        fine = self.fine.setdefault(key, np.full(len(sc), np.nan, np.float32))
        rows = reachable(sc, self.labels, count, factor=RESCORE_REACH)
        cap = max(len(rows), int(RESCORE_MOST * count))
        for round_ in range(RESCORE_ROUNDS + 1):
            todo = rows[np.isnan(fine[rows])]
            if len(todo):
                k, block = int(cand.options.get("k", 5)), self.inputs.stream.block_bytes
                fine[todo] = scoring.knn_of_rows(pool_full, todo, targets, k=k, block_bytes=block)
            more = at_risk(sc, self.labels, rows, -fine[rows].astype(np.float64), count)
            if round_ == RESCORE_ROUNDS or not len(more) or len(rows) >= cap:
                break
            rows = np.union1d(rows, more[np.argsort(sc[more], kind="stable")[: cap - len(rows)]])
        out = rescored(sc, rows, -fine[rows].astype(np.float64))
        self.last_rescored = (key, count, out)
        return out

    def order_of(self, cand: Candidate, count: int, eligible: np.ndarray, *, refine: bool = True) -> np.ndarray:
        sc = self.scores_at(cand, count, refine=refine)
        if cand.diversity > 0 and self.teacher.linear_pool is not None:
            order = diversified_order(sc, self.labels, self.strata_of, count, breadth=cand.diversity)
        else:
            order = np.argsort(sc, kind="stable")
        return order if eligible.all() else order[eligible[order]]

    def strata_of(self, rows: np.ndarray) -> np.ndarray:
        """The diversity strata of ``rows``: k-means centres fitted once on a sample of the full-width rows
        (a compressed index's source when kept), rows assigned as they are first asked for."""
        feats = self.teacher.linear_pool
        assert feats is not None
        if self.centers is None or self.strata is None:
            self.centers = strata_centers(feats, seed=self.inputs.seed)
            self.strata = np.full(len(feats), -1, np.int32)
        todo = np.unique(rows[self.strata[rows] < 0])
        if len(todo):
            self.strata[todo] = assign_strata(feats, todo, self.centers, block_bytes=self.inputs.stream.block_bytes)
        return self.strata[rows]

    @staticmethod
    def _key(cand: Candidate) -> str:
        return cand.selector + json.dumps(cand.options, sort_keys=True, default=str) if cand.options else cand.selector


@dataclass
class Built:
    candidate: Candidate
    payload: Payload
    data: bytes
    val_accuracy: float | None = None
