"""Pool manifests: identity is order- and content-sensitive, verification finds changed items."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from plada.shared.errors import PoolError
from plada.shared.pool import compute_pool_id, index_image_folder, open_pool, verify_pool, write_array_pool


def _images(n: int = 20, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (n, 8, 8), dtype=np.uint8)


def test_array_pool_round_trip_and_verify(tmp_path: Path) -> None:
    imgs = _images()
    pool = write_array_pool(tmp_path / "p", "tiny", imgs, [f"k{i}" for i in range(20)])
    again = open_pool(tmp_path / "p")
    assert again.pool_id == pool.pool_id and len(again) == 20 and again.image_shape == (8, 8, 1)
    assert np.array_equal(again.batch(np.array([3, 1]))[..., 0], imgs[[3, 1]])
    assert verify_pool(again).ok


def test_pool_id_depends_on_order_and_content(tmp_path: Path) -> None:
    imgs = _images()
    keys = [f"k{i}" for i in range(20)]
    a = write_array_pool(tmp_path / "a", "x", imgs, keys).pool_id
    b = write_array_pool(tmp_path / "b", "x", imgs[::-1].copy(), keys[::-1]).pool_id
    changed = imgs.copy()
    changed[5, 0, 0] ^= 1
    c = write_array_pool(tmp_path / "c", "x", changed, keys).pool_id
    assert len({a, b, c}) == 3


def test_verify_finds_a_changed_pixel(tmp_path: Path) -> None:
    write_array_pool(tmp_path / "p", "tiny", _images(), [f"k{i}" for i in range(20)])
    arr = np.load(tmp_path / "p" / "images.npy")
    arr[7, 3, 3] ^= 0xFF
    np.save(tmp_path / "p" / "images.npy", arr)
    report = verify_pool(open_pool(tmp_path / "p"))
    assert not report.ok and report.n_mismatched == 1 and report.first_mismatches == ["k7"]


def test_edited_pool_json_is_refused(tmp_path: Path) -> None:
    write_array_pool(tmp_path / "p", "tiny", _images(), [f"k{i}" for i in range(20)])
    info = json.loads((tmp_path / "p" / "pool.json").read_text())
    info["pool_id"] = "0" * 64
    (tmp_path / "p" / "pool.json").write_text(json.dumps(info))
    with pytest.raises(PoolError, match="does not match"):
        open_pool(tmp_path / "p")


@pytest.mark.parametrize("content", [None, "not json", json.dumps({"format": "other"})])
def test_not_a_pool(tmp_path: Path, content: str | None) -> None:
    if content is not None:
        (tmp_path / "pool.json").write_text(content)
    with pytest.raises(PoolError):
        open_pool(tmp_path)


def test_image_folder_pool(tmp_path: Path) -> None:
    from PIL import Image

    src = tmp_path / "train"
    rng = np.random.default_rng(0)
    for wnid in ("n02", "n01"):
        (src / wnid).mkdir(parents=True)
        for j in range(3):
            Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(src / wnid / f"{j}.JPEG")
    (src / "README.txt").write_text("not an image")
    pool = index_image_folder(src, tmp_path / "pool", "folder-pool", image_size=16)
    assert list(pool.manifest.keys[:2]) == ["n01/0.JPEG", "n01/1.JPEG"] and len(pool) == 6
    assert pool.manifest.groups is not None and list(pool.manifest.groups) == [0, 0, 0, 1, 1, 1]
    assert pool.batch(np.array([0, 5])).shape == (2, 16, 16, 3)
    assert verify_pool(pool).ok
    (src / "n02" / "1.JPEG").write_bytes(b"changed")
    assert verify_pool(open_pool(tmp_path / "pool")).first_mismatches == ["n02/1.JPEG"]


def test_empty_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PoolError, match="no images"):
        index_image_folder(tmp_path, tmp_path / "out", "x")


def test_mini_world_layout(pool, world_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """The canonical order of mini-v1: 60k Fashion-MNIST train, 5k Animal-MNIST, 5k MNIST."""
    assert len(pool) == 70_000 and pool.image_shape == (28, 28, 1)
    keys = pool.manifest.keys
    assert keys[0] == "fashion-mnist/train/00000" and keys[59_999] == "fashion-mnist/train/59999"
    assert keys[60_000] == "animal-mnist/00000" and keys[60_500] == "animal-mnist/01000"
    assert keys[64_999] == "animal-mnist/09499" and keys[65_000] == "mnist-5k/0000"
    assert pool.pool_id == compute_pool_id(pool.manifest.keys, pool.manifest.hashes)
    sizes = {
        t: (
            len(np.load(world_dir / "tasks" / t / "train.npz")["y"]),
            len(np.load(world_dir / "tasks" / t / "test.npz")["y"]),
        )
        for t in ("fashion", "animals", "digits")
    }
    assert sizes == {"fashion": (5000, 5000), "animals": (2500, 2500), "digits": (1000, 797)}


def test_missing_fashion_source_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from plada.shared.datasets.mini import build_mini_world
    from plada.shared.errors import PoolSourceMissingError

    monkeypatch.setenv("PLADA_FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(PoolSourceMissingError, match="apt-get install dataset-fashion-mnist"):
        build_mini_world(tmp_path / "w", log=lambda _m: None)
    assert not (tmp_path / "w" / "BUILD.json").exists()


def test_cluster_command_stores_a_layout_without_changing_pool_id(tmp_path: Path) -> None:
    import json as _json
    import subprocess
    import sys

    pool = write_array_pool(tmp_path / "p", "tiny", _images(300), [f"k{i}" for i in range(300)])
    assert pool.layout is None
    r = subprocess.run(
        [sys.executable, "-m", "plada.server.cli", "pool", "cluster", str(tmp_path / "p"), "--k", "4", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    out = _json.loads(r.stdout)
    again = open_pool(tmp_path / "p")
    assert again.pool_id == pool.pool_id and again.manifest.clusters is not None
    assert again.layout is not None and again.layout.layout_id == out["layout_id"] and len(again.layout.bounds) == 5


def test_verify_pool_cli(tmp_path: Path) -> None:
    import json as _json
    import subprocess
    import sys

    pool = write_array_pool(tmp_path / "p", "tiny", _images(), [f"k{i}" for i in range(20)])
    cmd = [sys.executable, "-m", "plada.client.cli", "verify-pool", "--json", str(tmp_path / "p")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and _json.loads(r.stdout) == {
        "pool": "tiny",
        "pool_id": pool.pool_id,
        "n_items": 20,
        "verified": True,
    }
    arr = np.load(tmp_path / "p" / "images.npy")
    arr[2, 0, 0] ^= 1
    np.save(tmp_path / "p" / "images.npy", arr)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stdout == "" and r.stderr.strip().count("\n") == 0
    assert "1 of 20 items differ" in r.stderr and "k2" in r.stderr


def _tree(root: Path, groups: int, per: int) -> None:
    for g in range(groups):
        (root / f"n{g:03d}").mkdir(parents=True)
        for j in range(per):
            (root / f"n{g:03d}" / f"{j}.JPEG").write_bytes(f"{g}-{j}".encode() * 3)


def test_interrupted_folder_index_resumes_where_it_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import plada.shared.pool.build as pool_mod

    src = tmp_path / "train"
    _tree(src, 5, 40)
    whole = index_image_folder(src, tmp_path / "whole", "p", checkpoint_every=50)
    hashed: list[str] = []
    real = pool_mod._hash_file
    monkeypatch.setattr(pool_mod, "_hash_file", lambda p: hashed.append(p) or real(p))

    def crash(done: int, _n: int) -> None:
        if done >= 100:
            raise KeyboardInterrupt  # the operator's Ctrl-C, or a killed job

    with pytest.raises(KeyboardInterrupt):
        index_image_folder(src, tmp_path / "resumed", "p", checkpoint_every=50, progress=crash)
    assert (tmp_path / "resumed" / ".index-partial.npz").is_file() and len(hashed) == 100
    hashed.clear()
    resumed = index_image_folder(src, tmp_path / "resumed", "p", checkpoint_every=50)
    assert len(hashed) == 100  # only the second half was read again
    assert resumed.pool_id == whole.pool_id and not (tmp_path / "resumed" / ".index-partial.npz").exists()
    # a changed file list is a different listing: its checkpoint is ignored, not trusted
    with pytest.raises(KeyboardInterrupt):
        index_image_folder(src, tmp_path / "again", "p", checkpoint_every=50, progress=crash)
    (src / "n000" / "extra.JPEG").write_bytes(b"new")
    hashed.clear()
    assert index_image_folder(src, tmp_path / "again", "p", checkpoint_every=50).pool_id != whole.pool_id
    assert len(hashed) == 201


def test_manifest_keys_are_stored_compactly_and_old_manifests_still_load(tmp_path: Path) -> None:
    from plada.shared.pool import KeyTable, PoolManifest

    keys = ["n01/a.JPEG", "n01/ü.JPEG", "n02/b.JPEG"]
    hashes = np.arange(48, dtype=np.uint8).reshape(3, 16)
    m = PoolManifest(name="k", keys=keys, hashes=hashes, groups=np.array([0, 0, 1], np.int32))
    assert isinstance(m.keys, KeyTable) and m.keys[1] == "n01/ü.JPEG" and m.keys[-1] == "n02/b.JPEG"
    assert m.keys[0:2] == keys[:2] and len(m.keys) == 3
    m.save(tmp_path / "new.npz")
    with np.load(tmp_path / "new.npz") as z:
        assert "keys_utf8" in z.files and z["keys_utf8"].dtype == np.uint8
    np.savez(tmp_path / "old.npz", keys=np.asarray(keys), hashes=hashes)  # format written before the key table
    old = PoolManifest.load(tmp_path / "old.npz", "k")
    assert old.pool_id == PoolManifest.load(tmp_path / "new.npz", "k").pool_id == compute_pool_id(keys, hashes)


def test_tar_shard_pool_reads_items_in_place(tmp_path: Path) -> None:
    """WebDataset layout: <key>.jpg + <key>.cls per sample; groups come from .cls, bytes are read by offset."""
    import io
    import tarfile

    from PIL import Image

    from plada.shared.pool import index_tar_shards

    rng = np.random.default_rng(0)
    shards = tmp_path / "shards"
    shards.mkdir()
    originals: dict[str, bytes] = {}
    for s in range(2):
        with tarfile.open(shards / f"in1k-{s:06d}.tar", "w") as tf:
            for i in range(4):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(buf, format="JPEG")
                for name, data in (
                    (f"{s}{i:05d}.jpg", buf.getvalue()),
                    (f"{s}{i:05d}.cls", str(7 * s + i % 2).encode()),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
                originals[f"in1k-{s:06d}.tar/{s}{i:05d}.jpg"] = buf.getvalue()
    (shards / "notes.txt").write_text("not a shard")
    pool = index_tar_shards(shards, tmp_path / "pool", "tars", image_size=16)
    assert pool.manifest.keys[:] == list(originals) and len(pool) == 8
    assert pool.manifest.groups is not None and pool.manifest.groups.tolist() == [0, 1, 0, 1, 7, 8, 7, 8]
    assert all(pool.item_bytes(i) == originals[pool.manifest.keys[i]] for i in range(8))
    again = open_pool(tmp_path / "pool")
    assert again.batch(np.array([7, 0])).shape == (2, 16, 16, 3) and verify_pool(again).ok
    with pytest.raises(PoolError, match=r"no \.tar shards"):
        index_tar_shards(tmp_path / "pool", tmp_path / "x", "none")


def test_pool_batches_decode_in_worker_processes_in_order(tmp_path: Path) -> None:
    import torch
    from PIL import Image

    from plada.shared.nn import pool_batches

    rng = np.random.default_rng(0)
    for g in range(3):
        (tmp_path / "src" / f"g{g}").mkdir(parents=True)
        for i in range(7):
            Image.fromarray(rng.integers(0, 255, (9, 11, 3), dtype=np.uint8)).save(
                tmp_path / "src" / f"g{g}" / f"{i}.png"
            )
    pool = index_image_folder(tmp_path / "src", tmp_path / "pool", "p", image_size=8)
    chunks = list(pool_batches(pool, device=torch.device("cpu"), chunk=4, workers=2))
    assert [len(c) for c in chunks] == [4, 4, 4, 4, 4, 1]
    assert np.array_equal(torch.cat(chunks).numpy(), pool.batch(np.arange(21)))


def test_training_streams_from_an_image_pool_like_from_memory(tmp_path: Path) -> None:
    """fit/accuracy on PoolItems (decoded in 2 DataLoader workers) give bit-identical weights to fit on the
    same images loaded up front: streaming changes memory, not results."""
    import torch
    from PIL import Image

    from plada.shared import nn as pnn

    rng = np.random.default_rng(0)
    for g in range(2):
        (tmp_path / "src" / f"g{g}").mkdir(parents=True)
        for i in range(10):
            img = rng.integers(0, 80, (12, 12), dtype=np.uint8) + 120 * g
            Image.fromarray(img.astype(np.uint8)).save(tmp_path / "src" / f"g{g}" / f"{i}.png")
    pool = index_image_folder(tmp_path / "src", tmp_path / "pool", "p", image_size=12, channels=1)
    idx = np.array([3, 15, 0, 19, 7, 11, 2, 18, 5, 14])
    y = (idx >= 10).astype(np.int64)
    cfg = pnn.FitConfig(epochs=2, batch_size=4, seed=0)
    cpu = torch.device("cpu")
    models = []
    for x in (pool.batch(idx), pnn.PoolItems(pool, idx, workers=2)):
        m = pnn.create_model("smallcnn", in_chans=1, num_classes=2, seed=0)
        pnn.fit(m, x, y, cfg, size=(12, 12), channels=1, device=cpu)
        models.append(m)
        assert pnn.accuracy(m, x, y, size=(12, 12), channels=1, device=cpu) >= 0.5
    a, b = (m.state_dict() for m in models)
    assert all(torch.equal(a[k], b[k]) for k in a)
