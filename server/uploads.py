"""Reading the publisher's labelled target data: ``.npz`` (x uint8, y int) or ``.zip`` (<class>/<image>).

Everything is checked before a single row or file is written. Zip members are never extracted to disk, so
names cannot traverse paths; member count, total inflated size and image pixels are capped.
"""

from __future__ import annotations

import io
import uuid
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np

from plada.shared.errors import InvalidDataError
from plada.shared.pool import atomic_write

MAX_ITEMS = 1_000_000
MAX_ZIP_MEMBERS = 200_000
MAX_ZIP_INFLATED = 2 << 30
MAX_IMAGE_PIXELS = 4096 * 4096
MIN_PER_CLASS = 2


def _check_arrays(x: np.ndarray, y: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    if x.dtype != np.uint8:
        raise InvalidDataError(f"x must be uint8 images, got dtype {x.dtype}")
    if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[3] not in (1, 3)):
        raise InvalidDataError(f"x must have shape (N, H, W) or (N, H, W, 1|3), got {x.shape}")
    if min(x.shape[1:3]) < 8 or max(x.shape[1:3]) > 4096:
        raise InvalidDataError(f"images must be 8..4096 pixels per side, got {x.shape[1:3]}")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise InvalidDataError(f"y must be a 1-D integer array, got {y.dtype} {y.shape}")
    if len(x) != len(y):
        raise InvalidDataError(f"x has {len(x)} images but y has {len(y)} labels")
    if not 0 < len(y) <= MAX_ITEMS:
        raise InvalidDataError(f"need 1..{MAX_ITEMS} labelled images, got {len(y)}")
    if y.min() < 0 or y.max() >= n_classes:
        raise InvalidDataError(
            f"labels must be in 0..{n_classes - 1} (the spec has {n_classes} classes), "
            f"got {int(y.min())}..{int(y.max())}"
        )
    counts = np.bincount(y, minlength=n_classes)
    if (counts < MIN_PER_CLASS).any():
        missing = [int(c) for c in np.flatnonzero(counts < MIN_PER_CLASS)][:10]
        raise InvalidDataError(
            f"every class needs at least {MIN_PER_CLASS} images (for the server's "
            f"validation split); too few for class indices {missing}"
        )
    return x, y.astype(np.int64)


def read_npz(data: bytes, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            if "x" not in z.files or "y" not in z.files:
                raise InvalidDataError(f"the .npz needs arrays 'x' and 'y', found {sorted(z.files)}")
            x, y = z["x"], z["y"]
    except InvalidDataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InvalidDataError(f"data is not a readable .npz file: {exc}") from exc
    return _check_arrays(x, y, n_classes)


def read_zip(data: bytes, classes: list[str], image_shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``<class>/<image>`` members, decoded to the pool's image shape."""
    from PIL import Image

    h, w, c = image_shape
    index = {name: i for i, name in enumerate(classes)}
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise InvalidDataError(f"data is not a readable .zip file: {exc}") from exc
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        if len(members) > MAX_ZIP_MEMBERS:
            raise InvalidDataError(f"zip has {len(members)} files; the limit is {MAX_ZIP_MEMBERS}")
        if sum(m.file_size for m in members) > MAX_ZIP_INFLATED:
            raise InvalidDataError("zip inflates beyond the size limit")
        xs: list[np.ndarray] = []
        ys: list[int] = []
        for m in members:
            parts = PurePosixPath(m.filename).parts
            if m.filename.startswith("/") or ".." in parts or len(parts) != 2:
                raise InvalidDataError(f"zip member {m.filename!r} is not <class>/<image>")
            if parts[0] not in index:
                raise InvalidDataError(f"zip folder {parts[0]!r} is not one of the spec's classes")
            try:
                with Image.open(io.BytesIO(zf.read(m))) as im:
                    if im.width * im.height > MAX_IMAGE_PIXELS:
                        raise InvalidDataError(f"image {m.filename!r} is larger than {MAX_IMAGE_PIXELS} pixels")
                    arr = np.asarray(im.convert("L" if c == 1 else "RGB").resize((w, h)))
            except InvalidDataError:
                raise
            except Exception as exc:  # PIL raises many types for undecodable images
                raise InvalidDataError(f"zip member {m.filename!r} is not a readable image: {exc}") from exc
            xs.append(arr.reshape(h, w, c))
            ys.append(index[parts[0]])
    if not xs:
        raise InvalidDataError("zip holds no images")
    return _check_arrays(np.stack(xs), np.asarray(ys, dtype=np.int64), len(classes))


def read_target_data(
    data: bytes, filename: str, classes: list[str], image_shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Sniff the content, not the name: an archive of ``.npy`` members is an npz, anything else a zip."""
    if not data:
        raise InvalidDataError("the data file is empty")
    if data[:2] != b"PK":
        raise InvalidDataError(f"data {filename!r} is neither a .npz nor a .zip file")
    try:
        names = set(zipfile.ZipFile(io.BytesIO(data)).namelist())
    except zipfile.BadZipFile as exc:
        raise InvalidDataError(f"data {filename!r} is a damaged archive: {exc}") from exc
    if names and all(n.endswith(".npy") for n in names):
        return read_npz(data, len(classes))
    return read_zip(data, classes, image_shape)


def store_upload(uploads_dir: Path, x: np.ndarray, y: np.ndarray) -> Path:
    """Write the checked arrays atomically under a fresh name; the worker reads them from here."""
    path = uploads_dir / f"{uuid.uuid4().hex}.npz"
    atomic_write(path, lambda f: np.savez(f, x=x, y=y))
    return path


def load_upload(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return z["x"], z["y"]
