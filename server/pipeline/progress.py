"""One progress type for every stage of a job: ``report(fraction, note)`` with the fraction of the whole job
(0-1), so the worker's heartbeat and the dashboard's bar move monotonically whatever the stage."""

from __future__ import annotations

from collections.abc import Callable

StageProgress = Callable[[float, str], None]

# progress shares of the stages (they add to 1 with the final encode)
TEACHER, SCORE, VALIDATE = 0.35, 0.2, 0.4


def scaled(report: StageProgress, lo: float, hi: float, prefix: str = "") -> StageProgress:
    """A sub-stage's own 0-1 progress mapped onto [lo, hi] of the job's, its note prefixed (``prefix (note)``)."""
    return lambda f, note: report(lo + (hi - lo) * f, f"{prefix} ({note})" if prefix else note)
