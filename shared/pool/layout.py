"""The coding layout: pool items sorted by group (synset folder, or clusters computed once per pool), so a
payload's indices can be coded in an order where the items of one class sit close together."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PoolLayout:
    """A coding order for payloads: items sorted by their manifest group, and the group boundaries.

    Server and client derive it from the same manifest, so it never travels; its ``layout_id`` goes into a
    payload's header and the decoder refuses a payload whose layout is not its pool's.
    """

    order: np.ndarray  # coding position -> pool index
    bounds: np.ndarray  # block boundaries in coding positions: 0 = b_0 < b_1 < … < b_m = N
    layout_id: str

    @classmethod
    def from_groups(cls, groups: np.ndarray) -> PoolLayout:
        order = np.argsort(groups, kind="stable").astype(np.int64)
        g = groups[order]
        bounds = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1, len(g)].astype(np.int64)
        h = hashlib.sha256(b"plada-layout-v1\0")
        h.update(order.astype("<u4").tobytes())
        h.update(bounds.astype("<u8").tobytes())
        return cls(order=order, bounds=bounds, layout_id=h.hexdigest()[:32])
