"""Which of a payload's items this client's own pool copy really holds, checked as they are read.

A byte-identical pool (the one the server indexed, or a verified copy of it) needs no check: the payload is
used as it is (``coverage`` None), today's fast path. An **attached** copy (``plada-client pool attach``) is
checked item by item (``AttachedPool.check``): exact bytes, or the same picture re-encoded/resized (its
fingerprint within the calibrated distance) are used; missing items and other pictures under the payload's
keys are left out and counted. Training refuses when too little is left.

``DEFAULT_MIN_COVERAGE`` = 0.9: on the photo world, losing 1 % of a payload's items at random moves the
head-only student by well under a point (docs/benchmarks.md, "A client's own copy"), and a payload's own
selection keeps only a few percent of the pool, so a copy that lacks more than a tenth of *those* items is
a different or badly damaged copy (a wrong ``--key`` rule, a partial download) more often than a usable
one; that should be said before compute is spent. ``--min-coverage`` lowers it knowingly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from plada.shared.errors import CoverageError
from plada.shared.payload import Payload
from plada.shared.pool import Pool

DEFAULT_MIN_COVERAGE = 0.9


@dataclass(frozen=True)
class Coverage:
    total: int
    exact: int
    reencoded: int  # the same picture, re-encoded or resized (fingerprint within the distance)
    different: int  # another picture under the payload's key: never trained on
    missing: int
    empty_classes: tuple[str, ...] = ()
    first_missing: tuple[str, ...] = ()
    first_different: tuple[str, ...] = ()

    @property
    def used(self) -> int:
        return self.exact + self.reencoded

    @property
    def fraction(self) -> float:
        return self.used / self.total if self.total else 1.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "used": self.used,
            "exact": self.exact,
            "reencoded": self.reencoded,
            "different": self.different,
            "missing": self.missing,
            "fraction": round(self.fraction, 6),
            "empty_classes": list(self.empty_classes),
            "first_missing": list(self.first_missing),
            "first_different": list(self.first_different),
        }


def usable_items(
    payload: Payload, pool: Pool, min_coverage: float = DEFAULT_MIN_COVERAGE
) -> tuple[Payload, Coverage | None]:
    """The payload restricted to the items this copy holds as the server labelled them, and its coverage
    (None for a byte-identical pool: nothing is checked or dropped). Refused below ``min_coverage``, or when
    a class loses every item (the student could never predict it) unless ``min_coverage`` is 0."""
    if not getattr(pool, "attached", False):
        return payload, None
    from plada.shared.pool.attach import DIFFERENT, MISSING, SAME_PICTURE

    status = pool.check(payload.indices)  # type: ignore[attr-defined]
    keep = status <= SAME_PICTURE
    keys = pool.manifest.keys
    idx = payload.indices
    k = len(payload.classes)
    before = np.bincount(payload.labels, minlength=k)
    after = np.bincount(payload.labels[keep], minlength=k)
    cov = Coverage(
        total=len(payload),
        exact=int((status == 0).sum()),
        reencoded=int((status == SAME_PICTURE).sum()),
        different=int((status == DIFFERENT).sum()),
        missing=int((status == MISSING).sum()),
        empty_classes=tuple(payload.classes[c] for c in range(k) if before[c] and not after[c]),
        first_missing=tuple(keys[int(i)] for i in idx[status == MISSING][:5]),
        first_different=tuple(keys[int(i)] for i in idx[status == DIFFERENT][:5]),
    )
    if cov.fraction < min_coverage or (cov.empty_classes and min_coverage > 0):
        raise CoverageError(_refusal(payload, pool, cov, min_coverage))
    if keep.all():
        return payload, cov
    tiers = None if payload.tiers is None else payload.tiers[keep]
    return dataclasses.replace(payload, indices=idx[keep], labels=payload.labels[keep], tiers=tiers), cov


def _refusal(payload: Payload, pool: Pool, cov: Coverage, min_coverage: float) -> str:
    what = []
    if cov.missing:
        what.append(f"{cov.missing:,} missing (first: {', '.join(cov.first_missing[:3])})")
    if cov.different:
        what.append(f"{cov.different:,} other pictures under their keys (first: {', '.join(cov.first_different[:3])})")
    head = (
        f"payload {payload.task} v{payload.version} uses {cov.total:,} items; the copy at {pool.info.get('source')} "
        f"holds {cov.used:,} of them ({100 * cov.fraction:.1f} %)"
    )
    if cov.empty_classes:
        why = f"no item is left for class(es) {', '.join(cov.empty_classes[:5])}"
    else:
        why = f"below --min-coverage {100 * min_coverage:g} %"
    return f"{head}, {why}: {'; '.join(what)}; attach a fuller copy, or lower --min-coverage knowingly"
