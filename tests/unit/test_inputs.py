"""Bad input stops at the edge: TaskSpec validation and target-data parsing."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from plada.server.publishing import parse_spec
from plada.server.uploads import ArchiveLimits, read_target_data
from plada.shared.errors import DecompressionBombError, InvalidDataError, InvalidSpecError, UnsafeArchivePathError
from plada.shared.payload import Payload, decode_payload, encode_payload

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
        (json.dumps(BASE | {"classes": []}), "classes"),
        (json.dumps(BASE | {"classes": [f"c{i}" for i in range(100_000)]}), "at most 65535"),
        (json.dumps(BASE | {"classes": ["caf\u00e9", "cafe\u0301"]}), "NFC"),
        (json.dumps(BASE | {"classes": ["a\u0000", "b"]}), "control"),
        (json.dumps(BASE | {"classes": ["a\nb", "b"]}), "control"),
        (json.dumps(BASE | {"classes": ["x" * 201, "b"]}), "1-200"),
        ('{"name": "t", "classes": ["a", "b"], "pool_id": "mini-v1", "keep": NaN}', "keep"),
        ('{"name": "t", "classes": ["a", "b"], "pool_id": "mini-v1", "keep": Infinity}', "keep"),
        (json.dumps(BASE)[:-1] + ', "teacher": {"lr": NaN}}', "teacher.lr"),
        (json.dumps(BASE | {"name": "caf\u00e9"}), "name"),
        (json.dumps(BASE | {"teacher": {"seed": 2**64}}), "teacher.seed"),
        (json.dumps(BASE | {"selector": {"seed": -1}}), "selector.seed"),
        (json.dumps(BASE | {"teacher": {"epochs": 10**30}}), "teacher.epochs"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        (json.dumps(BASE | {"teacher": {"x": [[[[[[[[[1]]]]]]]]]}}), "nested more than"),
        (json.dumps(BASE | {"pad": "x" * (1 << 20)}), "the limit is"),
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
        (_npz(x=np.full((6, 28, 28), np.nan, np.float32), y=Y), "uint8"),
        (_npz(x=X, y=np.array([0, 0, 0, 1, 1, np.nan])), "integer"),
        (_npz(x=X, y=np.array([0, 0, 0, 1, 1, 1], dtype=object)), "objects"),
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
        ({"a/deep/0.png": _png(1)}, "not <class>/<image>"),
        ({"zebra/0.png": _png(1)}, "not one of the spec's classes"),
        ({"a/0.png": b"not an image", "b/0.png": _png(1)}, "not a readable image"),
        ({}, "no images"),
    ],
)
def test_bad_zip(members: dict[str, bytes], match: str) -> None:
    with pytest.raises(InvalidDataError, match=match):
        read_target_data(_zip(members) if members else _zip({"a/": b""}), "d.zip", ["a", "b"], SHAPE)


def test_unicode_class_names_are_kept_and_survive_the_payload() -> None:
    names = ["猫", "🐱 cat", "Ελληνικά", "caf\u00e9"]
    spec = parse_spec(json.dumps(BASE | {"classes": names}))
    assert spec.classes == names
    p = Payload(indices=[1, 5], labels=[0, 3], classes=tuple(names), pool_id="0" * 64, n_pool=10, task="t", version=1)
    assert decode_payload(encode_payload(p)).classes == tuple(names)


def test_decomposed_names_are_normalised_to_nfc() -> None:
    spec = parse_spec(json.dumps(BASE | {"classes": ["cafe\u0301", "b"]}))
    assert spec.classes == ["caf\u00e9", "b"]


def _npy_bytes(header_shape: tuple[int, ...], dtype: str, body: bytes) -> bytes:
    h = io.BytesIO()
    np.lib.format.write_array_header_1_0(h, {"descr": dtype, "fortran_order": False, "shape": header_shape})
    return h.getvalue() + body


def test_npy_header_claiming_terabytes_is_refused_before_allocating() -> None:
    y = io.BytesIO()
    np.save(y, Y)
    data = _zip({"x.npy": _npy_bytes((10**7, 4096, 4096), "|u1", b"\0" * 100), "y.npy": y.getvalue()})
    with pytest.raises(DecompressionBombError, match=r"decodes to \d+ bytes; the limit is"):
        read_target_data(data, "d.npz", ["a", "b"], SHAPE)


def _deflated(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return buf.getvalue()


def test_npz_that_inflates_past_the_limit_is_a_bomb() -> None:
    x = np.zeros((2000, 64, 64), np.uint8)  # 8 MB of zeros, ~8 KB deflated
    y = np.repeat([0, 1], 1000)
    buf = io.BytesIO()
    np.savez_compressed(buf, x=x, y=y)
    assert len(buf.getvalue()) < 100_000
    with pytest.raises(DecompressionBombError, match="inflates to"):
        read_target_data(buf.getvalue(), "d.npz", ["a", "b"], SHAPE, ArchiveLimits(max_inflated=4 << 20))
    # within the limit the same file is fine
    assert len(read_target_data(buf.getvalue(), "d.npz", ["a", "b"], SHAPE)[0]) == 2000


def test_member_with_an_absurd_ratio_is_a_bomb() -> None:
    data = _deflated({"a/0.png": b"\0" * (3 << 20), "b/0.png": _png(1)})
    with pytest.raises(DecompressionBombError, match="inflates"):
        read_target_data(data, "d.zip", ["a", "b"], SHAPE, ArchiveLimits(ratio_floor=1 << 20))


def test_image_over_the_pixel_limit_is_a_bomb() -> None:
    big = _png(0, size=(4097, 4096))
    assert len(big) < 200_000  # tiny on the wire, 16.8 Mpx decoded
    with pytest.raises(DecompressionBombError, match="pixels"):
        read_target_data(_zip({"a/0.png": big, "b/0.png": _png(1)}), "d.zip", ["a", "b"], SHAPE)


@pytest.mark.parametrize("name", ["../a/0.png", "a/../../0.png", "/etc/a/0.png", "a\\..\\..\\0.png", "C:/a/0.png"])
def test_unsafe_zip_paths_are_refused(name: str) -> None:
    with pytest.raises(UnsafeArchivePathError, match="unsafe path"):
        read_target_data(_zip({name: _png(1), "b/0.png": _png(2)}), "d.zip", ["a", "b"], SHAPE)


def test_zip_made_on_macos_is_read() -> None:
    """A zipped parent folder, Finder's __MACOSX metadata, .DS_Store and decomposed (NFD) folder names."""
    members = {f"data/cafe\u0301/{i}.png": _png(10 * i) for i in range(3)}
    members |= {f"data/b/{i}.png": _png(20 * i) for i in range(3)}
    members |= {"data/.DS_Store": b"\0\0\0\1Bud1", "__MACOSX/data/b/._0.png": b"\0\5\26\7"}
    x, y = read_target_data(_zip(members), "d.zip", ["caf\u00e9", "b"], SHAPE)
    assert x.shape == (6, 28, 28, 1) and sorted(y.tolist()) == [0, 0, 0, 1, 1, 1]


def test_png_header_claiming_400_megapixels_is_a_bomb() -> None:
    """A 70-byte PNG that claims 20,000 x 20,000 pixels: refused from its header, nothing is decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20_000, 20_000, 8, 0, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    with pytest.raises(DecompressionBombError):
        read_target_data(_zip({"a/0.png": png, "b/0.png": _png(1)}), "d.zip", ["a", "b"], SHAPE)
