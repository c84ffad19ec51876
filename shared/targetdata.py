"""Reading labelled target data: ``.npz`` (x uint8, y int) or ``.zip`` (<class>/<image>), the one loader for
the server's intake (a publisher's upload) and the client's ``train --eval`` split, so whatever publishes
also evaluates (photos of mixed sizes are resized to the working shape on both sides).

Everything is checked before a single row or file is written. Archives are hostile until proven otherwise:
member count, total inflated size and the inflation ratio of big members are capped before anything is
inflated (zipfile stops at each member's declared size, so the declared sizes bound the work); ``.npy``
headers are read before their arrays so a header that claims terabytes never reaches an allocation; zip
members are never extracted to disk and names that could escape a folder are refused; images are opened
lazily and their pixel count checked before decoding.

The checks run cheapest first: the archive's end-of-central-directory record (a few bytes at its end) gives the
member count and the directory's size before ``zipfile`` parses the directory; every image's header gives the
total pixels to decode before the first is decoded. Only the image formats plada documents are decoded
(``IMAGE_FORMATS``: never EPS/PostScript or other formats that call external programs); 16-bit images are
scaled to 8 bit (not clipped) and EXIF orientation is applied.
"""

from __future__ import annotations

import io
import math
import unicodedata
import zipfile
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO, TYPE_CHECKING

import numpy as np

from plada.shared.errors import DecompressionBombError, InvalidDataError, PladaError, UnsafeArchivePathError

if TYPE_CHECKING:
    from PIL import Image

MAX_ITEMS = 1_000_000
MIN_PER_CLASS = 2
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")
_CD_ENTRY_MAX = 46 + 65535 * 3  # a central-directory entry: fixed part + name, extra and comment (<= 64 KiB each)


@dataclass(frozen=True)
class ArchiveLimits:
    """What one upload may inflate to. The ratio cap applies to members over ``ratio_floor`` bytes only:
    small members cannot hurt, and real image data compresses 2-20x, far below 250x."""

    max_members: int = 200_000
    max_inflated: int = 2 << 30
    max_ratio: float = 250.0
    ratio_floor: int = 64 << 20
    max_image_pixels: int = 4096 * 4096
    max_decoded: int = 1 << 30  # decoded bytes of all images together (sum of width x height x channels)


DEFAULT_LIMITS = ArchiveLimits()


def _check_arrays(
    x: np.ndarray, y: np.ndarray, n_classes: int, names: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
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
        short = [int(c) for c in np.flatnonzero(counts < MIN_PER_CLASS)][:10]
        which = (
            ", ".join(f"{names[c]!r} ({counts[c]})" for c in short) if names is not None else f"class indices {short}"
        )
        raise InvalidDataError(
            f"every class needs at least {MIN_PER_CLASS} images (the server keeps some for validation); "
            f"too few for {which}: add images to those class folders"
        )
    return x, y.astype(np.int64)


def peek_central_directory(data: bytes) -> tuple[int, int]:
    """(member count, central-directory bytes) from the end-of-central-directory record (zip64 too), read
    before ``zipfile`` parses a directory that may claim millions of entries."""
    tail = data[-(22 + 65535) :]
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        raise InvalidDataError("the archive is damaged: no end-of-central-directory record (truncated, or not a zip)")
    entries, cd_size = (
        int.from_bytes(tail[at + 10 : at + 12], "little"),
        int.from_bytes(tail[at + 12 : at + 16], "little"),
    )
    loc = at - 20
    if (entries == 0xFFFF or cd_size == 0xFFFFFFFF) and loc >= 0 and tail[loc : loc + 4] == b"PK\x06\x07":
        offset = int.from_bytes(tail[loc + 8 : loc + 16], "little")  # of the zip64 end record
        rec = data[offset : offset + 56]
        if len(rec) == 56 and rec[:4] == b"PK\x06\x06":
            entries = int.from_bytes(rec[32:40], "little")
            cd_size = int.from_bytes(rec[40:48], "little")
    return entries, cd_size


def _check_directory(data: bytes, limits: ArchiveLimits) -> None:
    entries, cd_size = peek_central_directory(data)
    if entries > limits.max_members:
        raise DecompressionBombError(f"archive has {entries} members; the limit is {limits.max_members}")
    if cd_size > min(len(data), max(entries, 1) * _CD_ENTRY_MAX):
        raise InvalidDataError(f"the archive's central directory claims {cd_size} bytes for {entries} members")


def check_archive(zf: zipfile.ZipFile, limits: ArchiveLimits) -> list[zipfile.ZipInfo]:
    """The archive's file members, after the count, size and ratio caps; raises before inflating anything."""
    members = [m for m in zf.infolist() if not m.is_dir()]
    if len(members) > limits.max_members:
        raise DecompressionBombError(f"archive has {len(members)} files; the limit is {limits.max_members}")
    total = sum(m.file_size for m in members)
    if total > limits.max_inflated:
        raise DecompressionBombError(
            f"archive inflates to {total} bytes; the limit is {limits.max_inflated} (PLADA_MAX_INFLATED_BYTES)"
        )
    for m in members:
        if m.file_size > limits.ratio_floor and m.file_size > limits.max_ratio * max(m.compress_size, 1):
            raise DecompressionBombError(
                f"archive member {m.filename!r} inflates {m.file_size / max(m.compress_size, 1):.0f}x "
                f"({m.compress_size} -> {m.file_size} bytes); the limit is {limits.max_ratio:.0f}x"
            )
    return members


def _check_npy_header(zf: zipfile.ZipFile, member: zipfile.ZipInfo, limit: int) -> None:
    """Read only the ``.npy`` header: its shape and dtype must fit in the bytes the member really holds."""
    fmt = np.lib.format
    with zf.open(member) as f:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = fmt.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
        header_len = f.tell()
    if dtype.hasobject:
        raise InvalidDataError(f"array {member.filename!r} holds Python objects; only numeric arrays are read")
    need = math.prod(int(d) for d in shape) * dtype.itemsize
    if need > limit:
        raise DecompressionBombError(
            f"array {member.filename!r} decodes to {need} bytes; the limit is {limit} (PLADA_MAX_DECODED_BYTES)"
        )
    if need != member.file_size - header_len:
        raise InvalidDataError(
            f"array {member.filename!r} declares shape {tuple(shape)} of {dtype} ({need} bytes) "
            f"but holds {member.file_size - header_len} bytes"
        )


def read_npz(
    data: bytes, n_classes: int, limits: ArchiveLimits = DEFAULT_LIMITS, names: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            members = {m.filename: m for m in check_archive(zf, limits)}
            if "x.npy" not in members or "y.npy" not in members:
                found = sorted(n.removesuffix(".npy") for n in members)
                raise InvalidDataError(f"the .npz needs arrays 'x' and 'y', found {found}")
            for name in ("x.npy", "y.npy"):
                _check_npy_header(zf, members[name], limits.max_decoded)
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            x, y = z["x"], z["y"]
    except InvalidDataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, MemoryError) as exc:
        raise InvalidDataError(f"data is not a readable .npz file: {exc}") from exc
    return _check_arrays(x, y, n_classes, names)


def _nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name)


def _image_members(members: list[zipfile.ZipInfo], classes: set[str]) -> list[tuple[zipfile.ZipInfo, str]]:
    """(member, class folder) pairs. Names that could escape a folder are refused outright; macOS metadata
    (``__MACOSX/``, dot-files) is skipped; one common top folder that is not a class (a zipped parent
    folder) is stripped."""
    kept: list[tuple[zipfile.ZipInfo, tuple[str, ...]]] = []
    for m in members:
        name = m.filename
        parts = PurePosixPath(name).parts
        if (
            name.startswith(("/", "\\"))
            or "\\" in name
            or "\0" in name
            or ".." in parts
            or (len(name) > 1 and name[1] == ":")
        ):
            raise UnsafeArchivePathError(f"zip member {name!r} has an unsafe path (absolute, '..' or backslashes)")
        if parts[0] == "__MACOSX" or parts[-1].startswith("."):
            continue
        kept.append((m, parts))
    tops = {_nfc(p[0]) for _, p in kept}
    if kept and all(len(p) == 3 for _, p in kept) and len(tops) == 1 and not tops <= classes:
        kept = [(m, p[1:]) for m, p in kept]
    out: list[tuple[zipfile.ZipInfo, str]] = []
    for m, parts in kept:
        if len(parts) != 2:
            raise InvalidDataError(f"zip member {m.filename!r} is not <class>/<image>")
        out.append((m, _nfc(parts[0])))
    return out


def _open_image(f: IO[bytes], name: str) -> Image.Image:
    """Open (header only) with the documented formats alone: never a plugin that runs an external program."""
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(f, formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as exc:  # PIL's own guard, for headers far past ours
        raise DecompressionBombError(f"image {name!r}: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise InvalidDataError(
            f"zip member {name!r} is not a readable image in a supported format ({', '.join(IMAGE_FORMATS)})"
        ) from exc
    except Exception as exc:  # PIL raises many types for damaged headers
        raise InvalidDataError(f"zip member {name!r} is not a readable image: {type(exc).__name__}") from exc


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer images scaled by their range into 8-bit gray, not clipped at 255 as
    ``convert('L')`` would; other modes (palettes, alpha, CMYK) are left to PIL's own conversions."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max(initial=0) <= 65535 else float(arr.max())
        return Image.fromarray(np.clip(np.rint(arr / top * 255.0), 0, 255).astype(np.uint8), "L")
    if im.mode == "F":
        raise InvalidDataError("floating-point images are not supported; save them as 8- or 16-bit PNG")
    return im


def _decode(raw: bytes, name: str, shape: tuple[int, int, int]) -> np.ndarray:
    """One image, oriented as its EXIF says, in 8 bit, resized to ``shape``."""
    from PIL import ImageOps

    h, w, c = shape
    with _open_image(io.BytesIO(raw), name) as im:
        try:
            upright = _to_8bit(ImageOps.exif_transpose(im))
            arr = np.asarray(upright.convert("L" if c == 1 else "RGB").resize((w, h)))
        except InvalidDataError:
            raise
        except Exception as exc:  # PIL raises many types for undecodable images
            raise InvalidDataError(f"zip member {name!r} is not a readable image: {type(exc).__name__}") from exc
    return arr.reshape(h, w, c)


def read_zip(
    data: bytes, classes: list[str], image_shape: tuple[int, int, int], limits: ArchiveLimits = DEFAULT_LIMITS
) -> tuple[np.ndarray, np.ndarray]:
    """``<class>/<image>`` members, decoded to the pool's image shape. Class folders match the spec's class
    names after Unicode NFC normalisation (macOS writes decomposed names into zips); a class name with '/'
    matches the folder named with '_' in its place."""
    h, w, c = image_shape
    index = {_nfc(name): i for i, name in enumerate(classes)}
    for i, name in enumerate(classes):  # a folder cannot hold '/': "T-shirt/top" is the folder "T-shirt_top"
        alias = _nfc(name.replace("/", "_"))
        if "/" in name and alias not in index:
            index[alias] = i
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise InvalidDataError(f"data is not a readable .zip file: {exc}") from exc
    with zf:
        members = _image_members(check_archive(zf, limits), set(index))
        for _m, folder in members:
            if folder not in index:
                listed = ", ".join(repr(c) for c in classes[:20]) + (", …" if len(classes) > 20 else "")
                raise InvalidDataError(
                    f"zip folder {folder!r} is not one of the spec's classes ({listed}); name each folder as its "
                    "class ('/' in a class name becomes '_' in its folder name)"
                )
        total = 0  # headers first: the whole decode is bounded before any image is decoded
        for m, _folder in members:
            with zf.open(m) as f, _open_image(f, m.filename) as im:
                if im.width * im.height > limits.max_image_pixels:
                    raise DecompressionBombError(
                        f"image {m.filename!r} has {im.width}x{im.height} pixels; "
                        f"the limit is {limits.max_image_pixels}"
                    )
                total += im.width * im.height * len(im.getbands())
        if total > limits.max_decoded:
            raise DecompressionBombError(
                f"the zip's images decode to {total} bytes; the limit is {limits.max_decoded} (PLADA_MAX_DECODED_BYTES)"
            )
        xs = [_decode(zf.read(m), m.filename, (h, w, c)) for m, _folder in members]
        ys = [index[folder] for _m, folder in members]
    if not xs:
        raise InvalidDataError("zip holds no images")
    return _check_arrays(np.stack(xs), np.asarray(ys, dtype=np.int64), len(classes), classes)


def read_target_data(
    data: bytes,
    filename: str,
    classes: list[str],
    image_shape: tuple[int, int, int],
    limits: ArchiveLimits = DEFAULT_LIMITS,
) -> tuple[np.ndarray, np.ndarray]:
    """Sniff the content, not the name: an archive of ``.npy`` members is an npz, anything else a zip.

    zipfile, numpy's header parser and PIL raise many exception types on hostile bytes (NotImplementedError
    for an unknown zip version, tokenize errors for a mangled ``.npy`` header, RuntimeError for encryption…):
    whatever they raise is the data's fault, so it becomes ``invalid_data`` here, never a 500."""
    try:
        return _read_target_data(data, filename, classes, image_shape, limits)
    except (PladaError, MemoryError):
        raise
    except Exception as exc:
        raise InvalidDataError(
            f"data {filename!r} is not a readable archive ({type(exc).__name__} while reading it)"
        ) from exc


def _read_target_data(
    data: bytes,
    filename: str,
    classes: list[str],
    image_shape: tuple[int, int, int],
    limits: ArchiveLimits,
) -> tuple[np.ndarray, np.ndarray]:
    if not data:
        raise InvalidDataError("the data file is empty")
    if data[:2] != b"PK":
        raise InvalidDataError(f"data {filename!r} is neither a .npz nor a .zip file")
    _check_directory(data, limits)
    try:
        names = set(zipfile.ZipFile(io.BytesIO(data)).namelist())
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise InvalidDataError(f"data {filename!r} is a damaged archive: {exc}") from exc
    if names and all(n.endswith(".npy") for n in names):
        return read_npz(data, len(classes), limits, classes)
    return read_zip(data, classes, image_shape, limits)
