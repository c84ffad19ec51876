"""The server pipeline as a pure function on a tiny real pool: budgets, metrics, codec choice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from plada.server.pipeline.config import RunConfig
from plada.server.pipeline.run import run_pipeline
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
        res = run_pipeline(tiny_pool, x, y, _spec(max_bytes=max_bytes, keep=None), version=1)
        assert len(res.data) <= max_bytes and res.metrics["payload"]["bytes"] == len(res.data)
        assert res.metrics["selection"]["max_bytes"] == max_bytes
        kept[max_bytes] = res.metrics["selection"]["n_kept"]
        assert kept[max_bytes] == len(res.payload) > 0
    assert kept[1_200] > kept[600]


def test_budget_below_the_header_is_refused(tiny_pool: Pool) -> None:
    from plada.shared.errors import InvalidSpecError

    x, y = _bars(400, 1)
    with pytest.raises(InvalidSpecError, match="smaller than"):
        run_pipeline(tiny_pool, x, y, _spec(max_bytes=200, keep=None), version=1)


def test_metrics_and_codec_choice(tiny_pool: Pool) -> None:
    x, y = _bars(400, 2)
    res = run_pipeline(tiny_pool, x, y, _spec(keep=0.1), version=3)
    m = res.metrics
    assert m["teacher"]["split"] == "server validation" and m["teacher"]["n_train"] + m["teacher"]["n_val"] == 400
    assert m["selection"]["n_kept"] == 300 and sum(m["selection"]["label_counts"]) == 300
    assert m["payload"]["bytes"] <= m["payload"]["paper_codec_bytes"]
    p = decode_payload(res.data)
    assert p.version == 3 and p.pool_id == tiny_pool.pool_id and len(p) == 300
    sizes = [len(encode_payload(p, codec=c, layout=tiny_pool.layout)) for c in ("paper-v1", "entropy-v1", "entropy-v2")]
    assert len(res.data) == min(sizes)


def test_pinned_paper_codec_stays_format_1(tiny_pool: Pool) -> None:
    x, y = _bars(400, 3)
    res = run_pipeline(tiny_pool, x, y, _spec(keep=0.05, codec="paper-v1"), version=1)
    assert res.data[4] == 1 and res.metrics["payload"]["codec"]["name"] == "paper-v1"


def test_priority_tiers_follow_the_score(tiny_pool: Pool) -> None:
    x, y = _bars(400, 4)
    res = run_pipeline(tiny_pool, x, y, _spec(keep=0.1, tiers=3), version=1)
    p = decode_payload(res.data, layout=tiny_pool.layout)
    assert p.n_tiers == 3 and res.metrics["selection"]["tiers"] == 3
    assert np.bincount(p.tiers).tolist() == [100, 100, 100]  # type: ignore[arg-type]
    assert res.metrics["payload"]["paper_codec_bytes"] > 0


def test_big_logits_spill_to_memory_mapped_float16(
    tiny_pool: Pool, tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over the RAM budget the pool's logits live in an unlinked float16 memory map (nothing left on disk);
    scores are computed in row chunks and the selection is (nearly) the one from float32 logits in RAM."""
    from plada.server.pipeline import blocks, scoring
    from plada.server.pipeline.teacher import score_pool, train_teacher
    from plada.shared.schemas import TeacherOptions

    x, y = _bars(400, 7)
    teacher = train_teacher(x, y, 4, TeacherOptions(epochs=2), image_shape=(16, 16, 1), device=torch.device("cpu"))
    in_ram, _ = score_pool(teacher, tiny_pool, chunk=512)
    spill = RunConfig(logits_ram_bytes=0, scratch_dir=tmp_path)  # type: ignore[arg-type]
    monkeypatch.setattr(scoring, "ROWS", 97)  # many uneven chunks
    spilled, _ = score_pool(teacher, tiny_pool, chunk=512, config=spill)
    assert blocks.is_mapped(spilled) and not blocks.is_mapped(in_ram)
    assert spilled.dtype == np.float16 and in_ram.dtype == np.float32
    assert list(tmp_path.iterdir()) == []  # type: ignore[attr-defined]
    np.testing.assert_allclose(spilled.astype(np.float32), in_ram, rtol=2e-3, atol=2e-2)
    assert (scoring.labels(spilled) == in_ram.argmax(1)).mean() > 0.995
    e_ram, e_spill = scoring.energy(in_ram), scoring.energy(spilled)
    assert np.corrcoef(e_ram, e_spill)[0, 1] > 0.9999
    k = 150  # float16 rounding swaps a few near-ties at the edge of the budget (145 of 150 kept here)
    assert len(set(np.argsort(e_ram)[:k]) & set(np.argsort(e_spill)[:k])) >= 0.95 * k
    # the whole pipeline runs on spilled logits
    res_ram = run_pipeline(
        tiny_pool,
        x,
        y,
        _spec(keep=0.05, selector={"name": "energy", "validate_candidates": False}),
        version=1,
        config=spill,
    )
    assert len(res_ram.payload) == 150 and list(tmp_path.iterdir()) == []  # type: ignore[attr-defined]


def test_run_config_comes_from_settings_not_the_environment(tmp_path: Path) -> None:
    """The worker's options reach the pipeline as a value: the settings' fields, with no os.environ writes."""
    import os

    from plada.server.settings import Settings

    before = dict(os.environ)
    settings = Settings(data_dir=tmp_path, executor="ray", ray_actors=3, logits_ram_bytes=5, onnx=False)
    cfg = settings.run_config(device="cpu")
    assert (cfg.executor, cfg.ray_actors, cfg.logits_ram_bytes, cfg.onnx) == ("ray", 3, 5, False)
    assert cfg.weights_dir == tmp_path / "weights" and cfg.device == torch.device("cpu")
    assert dict(os.environ) == before
    with pytest.raises(ValueError, match="unknown executor"):
        RunConfig(executor="spark")  # type: ignore[arg-type]
