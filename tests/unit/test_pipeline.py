"""The server pipeline as a pure function on a tiny real pool: budgets, metrics, codec choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from plada.server.pipeline.publish import run_pipeline
from plada.shared.payload import decode_payload, encode_payload
from plada.shared.pool import Pool, write_array_pool
from plada.shared.schemas import TaskSpec


def _bars(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 40, (n, 16, 16), dtype=np.uint8)
    y = rng.integers(0, 4, n)
    x[np.arange(n), 2 + 3 * y, :] = 255
    return x, y


@pytest.fixture(scope="module")
def tiny_pool(tmp_path_factory: pytest.TempPathFactory) -> Pool:
    x, _ = _bars(3_000, 0)
    return write_array_pool(tmp_path_factory.mktemp("pool") / "p", "tiny", x, [f"i{i}" for i in range(3_000)])


def _spec(**kw: object) -> TaskSpec:
    base = {"name": "bars", "classes": ["a", "b", "c", "d"], "pool_id": "tiny", "teacher": {"epochs": 2}}
    return TaskSpec.model_validate(base | kw)


def test_byte_budget_keeps_the_largest_selection_that_fits(tiny_pool: Pool) -> None:
    x, y = _bars(400, 1)
    kept = {}
    for max_bytes in (600, 1_200):
        res = run_pipeline(
            tiny_pool, x, y, _spec(max_bytes=max_bytes, keep=None), version=1, device=torch.device("cpu")
        )
        assert len(res.data) <= max_bytes and res.metrics["payload"]["bytes"] == len(res.data)
        assert res.metrics["selection"]["max_bytes"] == max_bytes
        kept[max_bytes] = res.metrics["selection"]["n_kept"]
        assert kept[max_bytes] == len(res.payload) > 0
    assert kept[1_200] > kept[600]


def test_budget_below_the_header_is_refused(tiny_pool: Pool) -> None:
    from plada.shared.errors import InvalidSpecError

    x, y = _bars(400, 1)
    with pytest.raises(InvalidSpecError, match="smaller than"):
        run_pipeline(tiny_pool, x, y, _spec(max_bytes=200, keep=None), version=1, device=torch.device("cpu"))


def test_metrics_and_codec_choice(tiny_pool: Pool) -> None:
    x, y = _bars(400, 2)
    res = run_pipeline(tiny_pool, x, y, _spec(keep=0.1), version=3, device=torch.device("cpu"))
    m = res.metrics
    assert m["teacher"]["split"] == "server validation" and m["teacher"]["n_train"] + m["teacher"]["n_val"] == 400
    assert m["selection"]["n_kept"] == 300 and sum(m["selection"]["label_counts"]) == 300
    assert m["payload"]["bytes"] <= m["payload"]["paper_codec_bytes"]
    p = decode_payload(res.data)
    assert p.version == 3 and p.pool_id == tiny_pool.pool_id and len(p) == 300
    assert len(res.data) == min(len(encode_payload(p, codec=c)) for c in ("paper-v1", "entropy-v1"))


def test_pinned_paper_codec_stays_format_1(tiny_pool: Pool) -> None:
    x, y = _bars(400, 3)
    res = run_pipeline(tiny_pool, x, y, _spec(keep=0.05, codec="paper-v1"), version=1, device=torch.device("cpu"))
    assert res.data[4] == 1 and res.metrics["payload"]["codec"]["name"] == "paper-v1"


def test_priority_tiers_follow_the_score(tiny_pool: Pool) -> None:
    x, y = _bars(400, 4)
    res = run_pipeline(tiny_pool, x, y, _spec(keep=0.1, tiers=3), version=1, device=torch.device("cpu"))
    p = decode_payload(res.data, layout=tiny_pool.layout)
    assert p.n_tiers == 3 and res.metrics["selection"]["tiers"] == 3
    assert np.bincount(p.tiers).tolist() == [100, 100, 100]  # type: ignore[arg-type]
    assert res.metrics["payload"]["paper_codec_bytes"] > 0
