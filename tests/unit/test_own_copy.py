"""A client's own copy of a pool: definitions (untrusted input), attaching each kind of copy by key, and the
per-item check that never lets a different picture through."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import struct
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from own_copy_world import write_tiny_pool

from harness import copies
from plada.client.coverage import usable_items
from plada.client.definitions import read_definition_file, verify_definition
from plada.shared.errors import CoverageError, DefinitionError, PoolError, SignatureError
from plada.shared.payload import Payload
from plada.shared.pool import (
    KeyRule,
    KeyTable,
    Pool,
    PoolManifest,
    attach,
    decode_definition,
    definition_of,
    encode_definition,
    open_pool,
)
from plada.shared.pool.attach import DIFFERENT, EXACT, MISSING, SAME_PICTURE, match_keys
from plada.shared.pool.definition import MAGIC, PoolDefinition
from plada.shared.pool.fingerprint import MATCH_DISTANCE, distance, file_fingerprint, fingerprint
from plada.shared.signing import DEFINITION_DOMAIN, SigningKey


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, pool: Pool) -> tuple[Path, Pool]:
    return write_tiny_pool(pool, tmp_path_factory.mktemp("tiny"))


def _png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


def test_the_fingerprint_keeps_re_encoded_and_resized_pictures_and_tells_others_apart(pool: Pool) -> None:
    from PIL import Image

    imgs = pool.batch(np.arange(60_000, 60_200))[..., 0]  # Animal-MNIST
    others = pool.batch(np.arange(0, 200))[..., 0]  # Fashion-MNIST: other pictures
    same, other = [], []
    for k, img in enumerate(imgs):
        fp = fingerprint(img)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=75)
        same.append(int(distance(fp, file_fingerprint(buf.getvalue()))))
        small = Image.fromarray(img).resize((14, 14), Image.Resampling.LANCZOS)
        same.append(int(distance(fp, fingerprint(small))))
        other.append(int(distance(fp, fingerprint(others[k]))))
    assert max(same) <= MATCH_DISTANCE, sorted(same)[-5:]
    assert min(other) > MATCH_DISTANCE, sorted(other)[:5]


def test_a_definition_round_trips_and_names_its_pool(tiny: tuple[Path, Pool]) -> None:
    _, p = tiny
    d = definition_of(p)
    back = decode_definition(encode_definition(d))
    assert back.pool_id == p.pool_id and len(back) == len(p) and back.hash_kind == "file"
    assert back.manifest.keys == p.manifest.keys and np.array_equal(back.fingerprints, d.fingerprints)
    assert back.group_names == ("animals", "digits", "fashion")


def _definition(keys: list[str]) -> bytes:
    m = PoolManifest(name="x", keys=keys, hashes=np.zeros((len(keys), 16), np.uint8))
    return encode_definition(PoolDefinition(manifest=m, image_shape=(8, 8, 1), hash_kind="file"))


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("../etc/passwd", "climbs out"),
        ("a/../../b", "climbs out"),
        ("a/..", "climbs out"),
        ("/etc/passwd", "absolute path"),
        ("a\\b.jpg", "backslash"),
        ("a\0b", "NUL"),
    ],
)
def test_a_definition_with_a_key_that_leaves_the_folder_is_refused(key: str, why: str) -> None:
    data = _definition(["ok/1.png", key, "ok/2.png"])
    with pytest.raises(DefinitionError, match=why) as e:
        decode_definition(data)
    assert "\n" not in str(e.value)


def test_definition_caps_hold_before_anything_is_allocated(tiny: tuple[Path, Pool]) -> None:
    data = encode_definition(definition_of(tiny[1]))
    with pytest.raises(DefinitionError, match="over the cap"):
        decode_definition(data, max_bytes=len(data) - 1)
    decode_definition(data, max_bytes=len(data))  # n / n-1
    with pytest.raises(DefinitionError, match="over the cap of 179"):
        decode_definition(data, max_items=179)
    with pytest.raises(DefinitionError, match="trailing"):
        decode_definition(data + b"x")
    with pytest.raises(DefinitionError, match="bad magic"):
        decode_definition(b"PLADAPAY" + data[8:])
    # a header that announces 2^31 items is refused by the item cap, not by a MemoryError
    hlen = struct.unpack_from("<I", data, len(MAGIC) + 1)[0]
    header = json.loads(data[len(MAGIC) + 5 : len(MAGIC) + 5 + hlen])
    header["n_items"] = 2**31
    head = json.dumps(header).encode()
    forged = MAGIC + struct.pack("<BI", 1, len(head)) + head + data[len(MAGIC) + 5 + hlen :]
    with pytest.raises(DefinitionError, match="over the cap"):
        decode_definition(forged)


def test_a_definition_whose_hashes_do_not_give_its_pool_id_is_refused(tiny: tuple[Path, Pool]) -> None:
    d = definition_of(tiny[1])
    hashes = d.manifest.hashes.copy()
    hashes[5, 0] ^= 1
    forged = dataclasses.replace(d, manifest=dataclasses.replace(d.manifest, hashes=hashes))
    data = encode_definition(forged).replace(forged.pool_id.encode(), d.pool_id.encode())
    with pytest.raises(DefinitionError, match="give pool"):
        decode_definition(data)


def test_a_pinned_key_must_sign_the_definition_under_the_definition_domain(
    tiny: tuple[Path, Pool], tmp_path: Path
) -> None:
    key = SigningKey(Ed25519PrivateKey.generate())
    data = encode_definition(definition_of(tiny[1]))
    sha = hashlib.sha256(data).hexdigest()
    good = key.sign(sha, domain=DEFINITION_DOMAIN)
    assert verify_definition(data, good, trust=key.public, source="t").sha256 == sha
    with pytest.raises(SignatureError, match=r"pool definition .* does not verify"):
        verify_definition(data, key.sign(sha), trust=key.public, source="t")  # a payload-domain signature
    with pytest.raises(SignatureError, match="unsigned"):
        verify_definition(data, None, trust=key.public, source="t")
    f = tmp_path / "tiny.pooldef"
    f.write_bytes(data)
    Path(str(f) + ".sig").write_text(good)
    assert read_definition_file(f, trust=key.public).definition.pool_id == tiny[1].pool_id


Maker = Callable[[Path, Path], list[str]]
KINDS: dict[str, tuple[Maker, str | None, int]] = {
    # name: (copy maker, expected dominant status, how many affected)
    "identical": (copies.identical, "exact", 0),
    "deleted": (lambda s, o: copies.delete_fraction(s, o, 0.05, seed=1), "missing", 9),
    "jpeg75": (lambda s, o: copies.reencode_jpeg(s, o, 75), "reencoded", 180),
    "png20": (lambda s, o: copies.downsample_png(s, o, 20), "reencoded", 180),
    "flat": (copies.flat, "exact", 0),
    "webdataset": (lambda s, o: copies.webdataset(s, o, per_shard=50), "exact", 0),
    "parquet": (lambda s, o: copies.parquet(s, o, per_file=100, row_group=40), "exact", 0),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_of_copy_attaches_by_key_and_every_item_is_checked(
    kind: str, tiny: tuple[Path, Pool], tmp_path: Path
) -> None:
    images, p = tiny
    make, status, affected = KINDS[kind]
    gone = make(images, tmp_path / "copy")
    d = decode_definition(encode_definition(definition_of(p)))
    report = attach(d, tmp_path / "copy", tmp_path / "att")
    assert report.matched + report.missing == len(p) and report.extra == 0
    assert report.missing == len(gone) == (affected if kind == "deleted" else 0)
    if gone:
        assert {g["group"] for g in report.groups_missing} <= {"fashion", "animals", "digits"}
        assert sum(g["missing"] for g in report.groups_missing) == len(gone)
    ap = open_pool(tmp_path / "att")
    assert ap.pool_id == p.pool_id and len(ap) == len(p) and ap.layout.layout_id == p.layout.layout_id
    st = ap.check(np.arange(len(p)))
    counts = {
        name: int((st == code).sum())
        for name, code in (
            ("exact", EXACT),
            ("reencoded", SAME_PICTURE),
            ("different", DIFFERENT),
            ("missing", MISSING),
        )
    }
    assert counts["different"] == 0, counts  # no re-encoded or resized picture is wrongly excluded
    assert counts[status] == (affected or len(p)), counts
    keys = [p.manifest.keys[i] for i in np.flatnonzero(st == MISSING)]
    assert keys == gone
    used = np.flatnonzero(st <= SAME_PICTURE)
    x = ap.batch(used[:7])
    assert x.shape == (7, *p.image_shape)
    if status == "exact":
        assert np.array_equal(x, p.batch(used[:7]))  # the same bytes: the same pixels


def test_other_pictures_under_the_right_keys_are_never_used(tiny: tuple[Path, Pool], tmp_path: Path) -> None:
    images, p = tiny
    # wrong pictures under the right names: fashion files overwritten by digits
    copies.identical(images, tmp_path / "copy")
    fashion = sorted((tmp_path / "copy" / "fashion").iterdir())[:12]
    digits = sorted((tmp_path / "copy" / "digits").iterdir())
    for f, g in zip(fashion, digits, strict=False):
        f.write_bytes(g.read_bytes())
    attach(definition_of(p), tmp_path / "copy", tmp_path / "att")
    ap = open_pool(tmp_path / "att")
    st = ap.check(np.arange(len(p)))
    bad = {f"fashion/{f.name}" for f in fashion}
    flagged = {p.manifest.keys[i] for i in np.flatnonzero(st == DIFFERENT)}
    assert flagged == bad
    # training on it: the wrong pictures are left out and counted; the copy still covers 93 %
    idx = np.arange(len(p))
    payload = Payload(idx, idx * 0, ("a",), p.pool_id, len(p), "t", 1)
    kept, cov = usable_items(payload, ap, 0.9)
    assert cov is not None and cov.different == 12 and cov.used == len(p) - 12 and len(kept) == len(p) - 12
    assert not set(kept.indices.tolist()) & set(np.flatnonzero(st == DIFFERENT).tolist())
    with pytest.raises(
        CoverageError, match=r"holds 168 of them \(93.3 %\), below --min-coverage 95 %: 12 other pictures"
    ):
        usable_items(payload, ap, 0.95)


def test_a_class_left_without_items_is_refused(tiny: tuple[Path, Pool], tmp_path: Path) -> None:
    images, p = tiny
    copies.identical(images, tmp_path / "copy")
    for f in (tmp_path / "copy" / "digits").iterdir():
        if f.name.endswith(("0.png", "1.png")):
            f.unlink()
    attach(definition_of(p), tmp_path / "copy", tmp_path / "att")
    ap = open_pool(tmp_path / "att")
    digits = np.flatnonzero([k.startswith("digits/") and k.endswith(("0.png", "1.png")) for k in p.manifest.keys])
    others = np.arange(len(p))[:100]
    idx = np.union1d(digits, others)
    labels = np.isin(idx, digits).astype(np.int64)
    payload = Payload(idx, labels, ("other", "digit-ending-0-1"), p.pool_id, len(p), "t", 1)
    with pytest.raises(CoverageError, match=r"no item is left for class.*digit-ending-0-1"):
        usable_items(payload, ap, 0.5)
    kept, cov = usable_items(payload, ap, 0.0)  # 0: take whatever the copy holds (inspect --preview does)
    assert cov is not None and cov.empty_classes == ("digit-ending-0-1",) and set(kept.labels.tolist()) == {0}


def test_identical_pools_keep_the_fast_path(tiny: tuple[Path, Pool]) -> None:
    _, p = tiny
    payload = Payload(np.arange(10), np.zeros(10, np.int64), ("a",), p.pool_id, len(p), "t", 1)
    kept, cov = usable_items(payload, p)
    assert kept is payload and cov is None


def test_links_out_of_the_tree_and_unsafe_tar_members_are_refused(tiny: tuple[Path, Pool], tmp_path: Path) -> None:
    images, p = tiny
    copies.identical(images, tmp_path / "copy")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "fashion_0.png").write_bytes(b"not the server's picture")
    os.symlink(outside, tmp_path / "copy" / "elsewhere")
    report = attach(definition_of(p), tmp_path / "copy", tmp_path / "att")
    assert report.refused == [f"refusing elsewhere: a link out of the copy's folder (to {outside})"]
    assert report.matched == len(p)
    shards = tmp_path / "shards"
    shards.mkdir()
    with tarfile.open(shards / "a.tar", "w") as tf:
        for name in ("../evil.png", "/abs.png", "fashion/fashion_0.png"):
            info = tarfile.TarInfo(name)
            data = (images / "fashion" / "fashion_0.png").read_bytes()
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    report = attach(definition_of(p), shards, tmp_path / "att2")
    assert len(report.refused) == 2 and all("leaves the shard" in r for r in report.refused)
    assert report.matched == 1


@pytest.mark.parametrize(
    ("names", "rule", "expect", "how"),
    [
        (["a/x.jpg", "a/y.jpg"], None, [0, 1], {"exact": 2}),
        (["a/x.png", "a/y.webp"], None, [0, 1], {"extension": 2}),
        (["a_x.jpg", "a_y.png"], None, [0, 1], {"flattened": 2}),
        (["x.jpg", "zz/y.jpg"], None, [0, 1], {"file name": 2}),
        (["A-x.jpg"], KeyRule("^A-(.+)$=a/\\1"), [0, -1], {"exact": 1}),
        (["a/x.jpg", "a/x.png", "q/r.jpg"], None, [0, -1], {"exact": 1, "extra": 2}),
    ],
)
def test_key_rules(names: list[str], rule: KeyRule | None, expect: list[int], how: dict[str, int]) -> None:
    loc, got = match_keys(KeyTable.from_strings(["a/x.jpg", "a/y.jpg"]), names, rule)
    assert loc.tolist() == expect
    assert {k: v for k, v in got.items() if v} == how


def test_a_bad_key_rule_is_one_line() -> None:
    with pytest.raises(PoolError, match="not REGEX=TEMPLATE"):
        KeyRule("no-separator")
    with pytest.raises(PoolError, match="does not compile"):
        KeyRule("([=x")


def test_payload_dataset_and_the_hash_pass_work_on_an_attached_copy(tiny: tuple[Path, Pool], tmp_path: Path) -> None:
    from plada.client import PayloadDataset
    from plada.shared.pool.attach import hash_pass

    images, p = tiny
    gone = copies.delete_fraction(images, tmp_path / "copy", 0.02, seed=4)
    (tmp_path / "copy" / "animals" / sorted(os.listdir(tmp_path / "copy" / "animals"))[0]).write_bytes(b"junk")
    attach(definition_of(p), tmp_path / "copy", tmp_path / "att")
    ap = open_pool(tmp_path / "att")
    idx = np.arange(len(p))
    payload = Payload(idx, idx % 3, ("a", "b", "c"), p.pool_id, len(p), "t", 1)
    ds = PayloadDataset(payload, ap, output="numpy")
    assert ds.coverage is not None and (ds.coverage.missing, ds.coverage.different) == (len(gone), 1)
    assert len(ds) == len(p) - len(gone) - 1
    img, label = ds[0]
    assert img.shape == p.image_shape and label in (0, 1, 2)
    counts = hash_pass(ap)
    assert counts == {"matched": len(p) - len(gone), "identical": len(p) - len(gone) - 1, "not_identical": 1}
    assert hash_pass(ap) == counts  # resumed from its record: nothing redone, the same answer
