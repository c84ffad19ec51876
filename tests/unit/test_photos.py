"""Real photos end to end, offline: a pretrained feature index, the probe teacher and proxies, the teacher cache,
head-only and pretrained client students, the photo-world builder and the friction fixes of the photo issue.

The photos are scikit-image's (crops of six real pictures); the weights are the packaged EfficientNet-Lite0.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from plada.client.train import TrainConfig, load_eval_split, train_student
from plada.server.pipeline.features import build_pretrained_index, open_feature_index
from plada.server.pipeline.run import finish, prepare, run_pipeline, validate_candidates
from plada.server.pipeline.teacher import TeacherOutput
from plada.server.pipeline.teacher_cache import TeacherCache
from plada.server.pipeline.validate import ProxyConfig, Trial, choose, far_ood_warnings
from plada.shared import nn as pnn
from plada.shared.datasets.photo import build_photo_world
from plada.shared.errors import PoolSourceMissingError
from plada.shared.pool import Pool, index_image_folder, open_pool
from plada.shared.schemas import TaskSpec

pytest.importorskip("skimage.data")
from photo_crops import crop_folder, crops, photo

CPU = torch.device("cpu")


def _photo(name: str) -> np.ndarray:
    return photo(name)


def _crops(img: np.ndarray, n: int, size: int, seed: int) -> np.ndarray:
    return crops(img, n, size, seed, smallest=0.5)


@pytest.fixture(scope="module")
def photo_pool(tmp_path_factory: pytest.TempPathFactory) -> Pool:
    """60 crops (10 of each of six photos) at their native 40 px, with a pretrained index at 64 px."""
    root = tmp_path_factory.mktemp("photos")
    pool = index_image_folder(crop_folder(root, 10, 40), root / "pool", "photos")
    build_pretrained_index(pool, image_size=64)
    return pool


def _task() -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([_crops(_photo("chelsea"), 20, 56, seed=2), _crops(_photo("coffee"), 20, 56, seed=3)])
    return x, np.repeat([0, 1], 20)


def test_index_folder_keeps_the_native_size(photo_pool: Pool) -> None:
    assert photo_pool.image_shape == (40, 40, 3)


def test_pretrained_index_matches_embedding_the_pool_again(photo_pool: Pool) -> None:
    """The cached rows are what ``embed`` makes of the same images: the publisher's images and the pool's live
    in one feature space (and ONNX Runtime agrees with eager torch)."""
    index = open_feature_index(photo_pool)
    assert index is not None and index.pretrained and index.dim == 1280 and index.input_size == (64, 64)
    again = index.embed(photo_pool.batch(np.arange(12)), device=CPU)
    np.testing.assert_allclose(again, np.asarray(index.features[:12], np.float32), rtol=0.01, atol=0.02)
    body = pnn.create_backbone("efficientnet_lite0")
    ort = pnn.for_cpu_inference(body, (64, 64))
    assert isinstance(ort, pnn.OrtBackbone)  # onnxruntime is a project dependency
    x = pnn.to_input(photo_pool.batch(np.arange(4)), size=(64, 64), channels=3, device=CPU, norm=body.plada_norm)  # type: ignore[arg-type]
    with torch.no_grad():
        torch.testing.assert_close(ort(x), body(x), rtol=1e-3, atol=1e-3)
    cal = index.info["near_duplicates"]
    assert 0 < cal["near_duplicate_cosine"] < 1 and set(cal["recall"]) == {
        "resized-75%",
        "jpeg-q60",
        "crop-90%",
        "brightness+15%",
    }


def test_the_checked_onnx_export_is_kept_beside_the_weights(photo_pool: Pool) -> None:
    """A fresh worker's first publish reads the export instead of importing timm, exporting and checking again;
    what it reads computes what eager torch computes."""
    index = open_feature_index(photo_pool)
    assert index is not None
    index.onnx_path.unlink(missing_ok=True)
    made = index.load_backbone(CPU, onnx=True)
    assert isinstance(made, pnn.OrtBackbone) and index.onnx_path.read_bytes() == made.onnx_bytes
    read = index.load_backbone(CPU, onnx=True)
    eager = index.load_backbone(CPU, onnx=False)
    assert isinstance(read, pnn.OrtBackbone) and read.plada_norm == eager.plada_norm
    x = pnn.to_input(
        photo_pool.batch(np.arange(4)), size=index.input_size, channels=3, device=CPU, norm=eager.plada_norm
    )  # type: ignore[arg-type]
    with torch.no_grad():
        torch.testing.assert_close(read(x), eager(x), rtol=1e-3, atol=1e-3)


def test_default_spec_uses_a_probe_teacher_probe_proxies_and_the_cache(photo_pool: Pool, tmp_path: Path) -> None:
    x, y = _task()
    spec = TaskSpec(name="cat-or-coffee", classes=["cat", "coffee"], pool_id="photos", keep=20 / 60)
    cache = TeacherCache(tmp_path / "teachers")
    first = run_pipeline(photo_pool, x, y, spec, version=1, cache=cache)
    m = first.metrics
    assert m["teacher"]["arch"] == "probe" and m["teacher"]["cached"] is False
    assert m["teacher"]["val_accuracy"] >= 0.9 and m["teacher"]["probe"]["temperature"] > 0
    assert m["validation"]["proxy_student"]["arch"] == "probe"
    assert len(m["validation"]["candidates"]) == 6 and m["validation"]["predicted_client_accuracy"] >= 0.75
    folders = [photo_pool.manifest.keys[i].split("/")[0] for i in first.payload.indices]
    assert np.isin(folders, ["chelsea", "coffee"]).mean() >= 0.75, folders
    assert m["domain"] is not None and 0 <= m["domain"]["atypical_share"] <= 1
    # only the budget changes: the teacher and its pool scores come from the cache (how much faster that is,
    # bench/ measures; a timed assertion here failed under CI contention)
    second = run_pipeline(photo_pool, x, y, spec.model_copy(update={"keep": 10 / 60}), version=2, cache=cache)
    assert second.metrics["teacher"]["cached"] is True
    assert second.metrics["teacher"]["val_accuracy"] == m["teacher"]["val_accuracy"]
    assert len(second.payload) == 10
    # another teacher option is another key
    other = spec.model_copy(update={"teacher": spec.teacher.model_copy(update={"seed": 1})})
    assert run_pipeline(photo_pool, x, y, other, version=3, cache=cache).metrics["teacher"]["cached"] is False


def test_many_class_validation_screens_then_confirms_with_the_clients_probe(photo_pool: Pool) -> None:
    """Past ``screen_above`` (forced here: 0) every candidate gets one probe fit at the teacher's L2, and only
    the ``confirm`` best get the client's own cross-validated probe: those alone compete, and their accuracy
    is exactly what the unscreened validation measured for them."""
    x, y = _task()
    spec = TaskSpec(name="cat-or-coffee", classes=["cat", "coffee"], pool_id="photos", keep=20 / 60)
    prep = prepare(photo_pool, x, y, spec)
    full = finish(prep, spec, version=1)
    plain = {c["label"]: c["val_accuracy"] for c in full.metrics["validation"]["candidates"]}
    assert all("screen_accuracy" not in c for c in full.metrics["validation"]["candidates"])  # small: no screen
    events: list[tuple[float, str]] = []
    proxy = ProxyConfig(kind="probe", screen_above=0, confirm=2)  # the default confirms one
    trials = validate_candidates(prep, full.built, proxy, lambda f, m: events.append((f, m)), device=CPU)
    verbs = [m.split(" ")[0] for _f, m in events]  # a payload met before is not fitted again
    distinct = len({b.data for b in full.built})
    assert verbs[: verbs.index("validating")] == ["screening"] * distinct and 1 <= verbs.count("validating") <= 2
    assert [f for f, _m in events] == sorted(f for f, _m in events)  # progress never goes back
    confirmed = [t for t in trials if t.confirmed]
    screen = [t.extra["screen_accuracy"] for t in trials]
    assert len(confirmed) == 2 and max(t.extra["screen_accuracy"] for t in confirmed) == max(screen)
    on_screen = [Trial(t.candidate, t.kept, t.n_bytes, t.extra["screen_accuracy"]) for t in trials]
    assert choose(on_screen).candidate.label in {t.candidate.label for t in confirmed}  # the screen picks
    for t in confirmed:
        assert t.val_accuracy == pytest.approx(plain[t.candidate.label], abs=1e-4)
    for t in trials:
        if not t.confirmed:
            assert t.summary()["screened_out"] is True and t.val_accuracy == pytest.approx(t.extra["screen_accuracy"])
    assert choose(trials).confirmed


def test_head_only_and_pretrained_clients(photo_pool: Pool, tmp_path: Path) -> None:
    x, y = _task()
    spec = TaskSpec(name="cat-or-coffee", classes=["cat", "coffee"], pool_id="photos", keep=20 / 60)
    res = run_pipeline(photo_pool, x, y, spec, version=1)
    xt, yt = (
        np.concatenate([_crops(_photo("chelsea"), 10, 48, 7), _crops(_photo("coffee"), 10, 48, 8)]),
        np.repeat([0, 1], 10),
    )
    cfg = TrainConfig(head_only=True, image_size=64, feature_cache=str(tmp_path / "feats"))
    m1 = train_student(res.payload, photo_pool, tmp_path / "head", cfg, eval_split=(xt, yt), payload_bytes=res.data)
    assert m1["test_accuracy"] >= 0.85 and m1["features_computed"] == len(res.payload)
    assert m1["config"]["arch"] == "efficientnet_lite0" and (tmp_path / "head" / "probe.npz").is_file()
    m2 = train_student(res.payload, photo_pool, tmp_path / "head2", cfg, eval_split=(xt, yt), payload_bytes=res.data)
    assert m2["features_computed"] == 0 and m2["test_accuracy"] == m1["test_accuracy"]  # cached by item hash
    full = TrainConfig(
        arch="efficientnet_lite0", pretrained=True, image_size=64, epochs=2, batch_size=8, head_init="probe"
    )
    m3 = train_student(res.payload, photo_pool, tmp_path / "full", full, eval_split=(xt, yt), payload_bytes=res.data)
    assert m3["test_accuracy"] >= 0.8, m3


def test_far_ood_warning_names_the_likely_cause() -> None:
    def out(val: float, pretrained: bool) -> TeacherOutput:
        z = np.zeros((1, 2), np.float32)
        return TeacherOutput("probe", z, None, None, "x", val, 1.0, 1, 1, pretrained_features=pretrained)

    assert far_ood_warnings(0.9, out(0.95, True), "probe", "p", 10) == []
    weak = far_ood_warnings(0.2, out(0.3, True), "probe", "p", 10)
    assert "far below" in weak[0] and "teacher (probe) is weak" in weak[0]
    students = far_ood_warnings(0.3, out(0.9, False), "smallcnn", "p", 10)
    assert "the students" in students[0] and "pretrained feature index" in students[0]
    pool = far_ood_warnings(0.3, out(0.9, True), "probe", "p", 10)
    assert "pool p holds little of this task's domain" in pool[0]
    domain = {
        "atypical_share": 0.6,
        "pool_quantile": 0.05,
        "upload_nearest_pool_cosine_median": 0.5,
        "pool_nearest_pool_cosine_median": 0.7,
    }
    far = far_ood_warnings(0.9, out(0.95, True), "probe", "p", 10, domain)
    assert len(far) == 1 and "looks far out of pool p's domain: 60%" in far[0]
    partly = far_ood_warnings(0.9, out(0.95, True), "probe", "p", 10, domain | {"atypical_share": 0.3})
    assert "looks partly out" in partly[0]
    assert far_ood_warnings(0.9, out(0.95, True), "probe", "p", 10, domain | {"atypical_share": 0.2}) == []


def _zip_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _png(seed: int, size: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    arr = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_photo_world_builder_from_a_folder_of_zips(tmp_path: Path) -> None:
    src = tmp_path / "photo-world"
    src.mkdir()
    with pytest.raises(PoolSourceMissingError, match=r"pool_photo40k\.zip not found"):
        build_photo_world(src, tmp_path / "out", log=lambda _m: None)
    pool_files = {f"n0{g}/n0{g}_{i}.JPEG": _png(10 * g + i, 20) for g in range(3) for i in range(4)}
    (src / "pool_photo40k.zip").write_bytes(_zip_of(pool_files))
    task = {
        f"{split}/{c}/{i}.jpg": _png(100 + i, 24) for split in ("pub", "test") for c in ("a", "b") for i in range(3)
    }
    task["classes.txt"] = b"0\ta\tAlpha\n1\tb\tBeta\n"
    (src / "target_toy.zip").write_bytes(_zip_of(task))
    pool = build_photo_world(src, tmp_path / "out", log=lambda _m: None)
    assert pool.name == "photo-v1" and len(pool) == 12 and pool.image_shape == (20, 20, 3)
    assert pool.manifest.groups is not None and len(set(pool.manifest.groups.tolist())) == 3
    meta = json.loads((tmp_path / "out" / "tasks" / "toy" / "task.json").read_text())
    assert meta["classes"] == ["Alpha", "Beta"] and meta["n_train"] == 6 and meta["n_test"] == 6
    with np.load(tmp_path / "out" / "tasks" / "toy" / "test.npz") as z:
        assert z["x"].shape == (6, 24, 24, 3) and z["y"].tolist() == [0, 0, 0, 1, 1, 1]
    assert open_pool(tmp_path / "out" / "pools" / "photo-v1").pool_id == pool.pool_id
    # a second build is the stamp's: nothing is redone
    assert build_photo_world(src, tmp_path / "out", log=pytest.fail).pool_id == pool.pool_id


def test_eval_split_may_be_a_zip_of_class_folders(tmp_path: Path) -> None:
    # photos of different sizes, as real collections hold them: resized to the pool's shape, as publishing does
    files = {f"split/{c}/{i}.png": _png(i, 16 + 8 * i) for c in ("dog", "cat") for i in range(2)}
    (tmp_path / "test.zip").write_bytes(_zip_of(files | {"__MACOSX/split/._x.png": b"junk"}))
    x, y = load_eval_split(tmp_path / "test.zip", ["cat", "dog"], (20, 20, 3))
    assert x.shape == (4, 20, 20, 3) and y.tolist() == [1, 1, 0, 0]  # dog first in the zip; the payload says 1
    from plada.server.uploads import read_target_data
    from plada.shared.errors import InvalidDataError

    data = (tmp_path / "test.zip").read_bytes()
    assert np.array_equal(read_target_data(data, "test.zip", ["cat", "dog"], (20, 20, 3))[0], x)  # one loader
    (tmp_path / "bad.zip").write_bytes(_zip_of({"cow/1.png": _png(1, 16)}))
    with pytest.raises(InvalidDataError, match="'cow' is not one of the spec's classes"):
        load_eval_split(tmp_path / "bad.zip", ["cat", "dog"])


def test_interrupted_pretrained_embedding_resumes_from_its_blocks(photo_pool: Pool) -> None:
    def crash(frac: float, _msg: str) -> None:
        if frac >= 0.5:
            raise KeyboardInterrupt  # a killed 'pool embed'

    with pytest.raises(KeyboardInterrupt):
        build_pretrained_index(photo_pool, "resume", image_size=64, block=16, progress=crash, calibrate=False)
    assert open_feature_index(photo_pool, "resume") is None  # nothing half-written is visible as an index
    index = build_pretrained_index(photo_pool, "resume", image_size=64, block=16, calibrate=False)
    # the crash came while the second block was being reported: the first block was kept, the second redone
    assert index.info["resumed_items"] == 16
    full = open_feature_index(photo_pool, "default")
    assert full is not None
    np.testing.assert_array_equal(np.asarray(index.features), np.asarray(full.features))


def test_lp_ft_classifier_reproduces_the_probe() -> None:
    """``--pretrained`` starts its classifier from the head-only probe: same logits on the same features."""
    from plada.client.train import init_classifier_from_probe
    from plada.shared.probe import fit_linear_probe

    rng = np.random.default_rng(0)
    f = rng.normal(size=(300, 24)).astype(np.float32) * 3 + 1
    y = (f[:, 0] + f[:, 1] > 2).astype(np.int64)
    probe = fit_linear_probe(f, y, 2)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(24, 2)

        def get_classifier(self) -> torch.nn.Module:
            return self.fc

    net = Net()
    init_classifier_from_probe(net, probe)
    with torch.no_grad():
        got = net.fc(torch.from_numpy(f)).numpy()
    np.testing.assert_allclose(got, probe.logits(f), rtol=1e-4, atol=1e-4)


def test_client_default_is_head_only_on_rgb_pools_with_weights(photo_pool: Pool, tmp_path: Path) -> None:
    from plada.client.train import resolve_head_only
    from plada.shared.pool import write_array_pool

    grey = write_array_pool(tmp_path / "grey", "grey", np.zeros((4, 8, 8), np.uint8), [f"g{i}" for i in range(4)])
    assert resolve_head_only(TrainConfig(), photo_pool) is True
    assert resolve_head_only(TrainConfig(), grey) is False  # the mini world keeps its small CNN
    assert resolve_head_only(TrainConfig(head_only=False), photo_pool) is False
    assert resolve_head_only(TrainConfig(arch="resnet18"), photo_pool) is False
    assert resolve_head_only(TrainConfig(arch="efficientnet_lite0", pretrained=True), photo_pool) is False
