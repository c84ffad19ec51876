"""Bad input stops at the edge: TaskSpec validation and target-data parsing."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from plada.server.publishing import parse_spec
from plada.server.uploads import read_target_data
from plada.shared.errors import InvalidDataError, InvalidSpecError

BASE = {"name": "t", "classes": ["a", "b"], "pool_id": "mini-v1"}
SHAPE = (28, 28, 1)


def test_defaults() -> None:
    spec = parse_spec(json.dumps(BASE))
    assert spec.keep == 0.01 and spec.max_bytes is None and spec.selector.name == "auto"


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps(BASE | {"name": "Bad Name"}), "name"),
        (json.dumps(BASE | {"classes": ["a"]}), "classes"),
        (json.dumps(BASE | {"classes": ["a", "a"]}), "unique"),
        (json.dumps(BASE | {"classes": ["a", " "]}), "blank"),
        (json.dumps(BASE | {"keep": 0}), "keep"),
        (json.dumps(BASE | {"keep": 1.5}), "keep"),
        (json.dumps(BASE | {"keep": 0.1, "max_bytes": 1000}), "not both"),
        (json.dumps(BASE | {"max_bytes": 2_000_000}), "max_bytes"),
        (json.dumps(BASE | {"surprise": 1}), "surprise"),
        (json.dumps(BASE | {"teacher": {"epochs": 0}}), "teacher.epochs"),
        (json.dumps({k: v for k, v in BASE.items() if k != "pool_id"}), "pool_id"),
        ("[]", "spec"),
    ],
)
def test_bad_spec(raw: str, match: str) -> None:
    with pytest.raises(InvalidSpecError, match=match):
        parse_spec(raw)


def _npz(**arrays: object) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


X = np.zeros((6, 28, 28), np.uint8)
Y = np.array([0, 0, 0, 1, 1, 1])


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty"),
        (b"hello world", "neither"),
        (b"PK\x03\x04garbage", "damaged"),
        (_npz(x=X), "needs arrays 'x' and 'y'"),
        (_npz(x=X.astype(np.float32), y=Y), "uint8"),
        (_npz(x=X[:, :, :, None].repeat(2, 3), y=Y), "shape"),
        (_npz(x=X, y=Y[:5]), "6 images but y has 5"),
        (_npz(x=X, y=Y + 5), "labels must be in 0..1"),
        (_npz(x=X, y=Y.astype(np.float64)), "integer"),
        (_npz(x=X, y=np.array([0, 0, 0, 0, 0, 1])), "at least 2"),
        (_npz(x=np.zeros((6, 4, 4), np.uint8), y=Y), "8..4096"),
    ],
)
def test_bad_data(data: bytes, match: str) -> None:
    with pytest.raises(InvalidDataError, match=match):
        read_target_data(data, "d.npz", ["a", "b"], SHAPE)


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return buf.getvalue()


def _png(value: int, size: tuple[int, int] = (40, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (value, value, value)).save(buf, format="PNG")
    return buf.getvalue()


def test_zip_layout_is_decoded_to_pool_shape() -> None:
    members = {f"{c}/{i}.png": _png(10 * i) for c in ("a", "b") for i in range(3)}
    x, y = read_target_data(_zip(members), "d.zip", ["a", "b"], SHAPE)
    assert x.shape == (6, 28, 28, 1) and sorted(y.tolist()) == [0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize(
    ("members", "match"),
    [
        ({"../a/0.png": _png(1)}, "not <class>/<image>"),
        ({"a/deep/0.png": _png(1)}, "not <class>/<image>"),
        ({"zebra/0.png": _png(1)}, "not one of the spec's classes"),
        ({"a/0.png": b"not an image", "b/0.png": _png(1)}, "not a readable image"),
        ({}, "no images"),
    ],
)
def test_bad_zip(members: dict[str, bytes], match: str) -> None:
    with pytest.raises(InvalidDataError, match=match):
        read_target_data(_zip(members) if members else _zip({"a/": b""}), "d.zip", ["a", "b"], SHAPE)
