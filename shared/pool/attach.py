"""Attaching a client's own copy of a pool to the server's definition, by key, and reading it as a ``Pool``.

``attach`` lists the copy (no decoding), maps each local entry onto a definition position by key and writes an
**attachment**: a pool folder of kind ``attached`` whose manifest is the definition's (so ``pool_id``, length
and the coding layout are the server's and every payload for that pool fits) and whose items are read from
wherever the copy keeps them. Key rules, first that matches wins (each local entry is used once):

1. the exact relative path (``--key`` applied first when given);
2. the same path with another extension (a copy re-encoded as PNG keeps its names);
3. the path flattened, ``a/b.JPEG`` ↔ ``a_b.JPEG`` (flat copies), with or without extension;
4. the file name alone, when it is unique in the definition (with or without extension).

``--key 'REGEX=TEMPLATE'`` rewrites each local name with ``re.sub`` before the rules (e.g.
``'^([^_]+)_(.+)$=\\1/\\2'``). A key is only ever looked up, never turned into a path: the copy's own
listing supplies every path.

``AttachedPool.check(indices)`` is where each used item is verified, when the client reads it anyway: its bytes'
hash equal to the definition's → exact; else its fingerprint within ``MATCH_DISTANCE`` → the same picture,
re-encoded or resized; else a different picture, never trained on.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from plada.shared.errors import PoolError
from plada.shared.files import atomic_write, atomic_write_bytes
from plada.shared.pool.definition import FINGERPRINTS_FILE, PoolDefinition
from plada.shared.pool.fingerprint import MATCH_DISTANCE, distance, file_fingerprint
from plada.shared.pool.manifest import POOL_FORMAT, POOL_FORMAT_VERSION, KeyTable, PoolManifest, item_hash
from plada.shared.pool.readers import Pool, decode_image
from plada.shared.pool.sources import Listing, SourceReader, as_arrays, list_source

EXACT, SAME_PICTURE, DIFFERENT, MISSING = 0, 1, 2, 3
STATUS_NAMES = ("exact", "reencoded", "different", "missing")
ATTACHMENT_FILE = "attachment.npz"


class KeyRule:
    """``REGEX=TEMPLATE``: ``re.sub(REGEX, TEMPLATE, local_name)`` is the key looked up in the definition."""

    def __init__(self, text: str) -> None:
        pattern, sep, template = text.rpartition("=")
        if not sep or not pattern:
            raise PoolError(f"--key {text!r} is not REGEX=TEMPLATE (e.g. '^([^_]+)_(.+)$=\\1/\\2')")
        try:
            self.regex = re.compile(pattern)
        except re.error as exc:
            raise PoolError(f"--key regex {pattern!r} does not compile: {exc}") from exc
        self.template, self.text = template, text

    def __call__(self, name: str) -> str:
        try:
            return self.regex.sub(self.template, name, count=1)
        except (re.error, IndexError) as exc:
            raise PoolError(f"--key {self.text!r} cannot rewrite {name!r}: {exc}") from exc


def _stem(k: str) -> str:
    base = k.rsplit("/", 1)[-1]
    dot = base.rfind(".")
    return k[: len(k) - len(base) + dot] if dot > 0 else k


def _unique_map(pairs: Any) -> dict[str, int]:
    """key → position, with keys that occur twice dropped (they would be guesses)."""
    out: dict[str, int] = {}
    dup: set[str] = set()
    for k, i in pairs:
        if k in out:
            dup.add(k)
        else:
            out[k] = i
    for k in dup:
        del out[k]
    return out


def match_keys(keys: KeyTable, names: list[str], rule: KeyRule | None = None) -> tuple[np.ndarray, dict[str, int]]:
    """Definition position → index into ``names`` (-1: missing), and how many entries each rule matched
    (``extra``: local entries that match no position or one already taken)."""
    n = len(keys)
    index = {k: i for i, k in enumerate(keys)}
    loc = np.full(n, -1, dtype=np.int64)
    how = {"exact": 0, "extension": 0, "flattened": 0, "file name": 0, "extra": 0}
    pending: list[tuple[int, str]] = []
    for j, name in enumerate(names):
        k = rule(name) if rule else name
        i = index.get(k)
        if i is not None and loc[i] < 0:
            loc[i] = j
            how["exact"] += 1
        else:
            pending.append((j, k))
    if pending:
        all_keys = list(index)
        del index
        tables = [
            ("extension", _unique_map((_stem(k), i) for i, k in enumerate(all_keys)), _stem),
            ("flattened", _unique_map((k.replace("/", "_"), i) for i, k in enumerate(all_keys)), lambda k: k),
            ("flattened", _unique_map((_stem(k).replace("/", "_"), i) for i, k in enumerate(all_keys)), _stem),
            ("file name", _unique_map((k.rsplit("/", 1)[-1], i) for i, k in enumerate(all_keys)), _base),
            ("file name", _unique_map((_stem(k.rsplit("/", 1)[-1]), i) for i, k in enumerate(all_keys)), _basestem),
        ]
        for j, k in pending:
            for label, table, f in tables:
                i2 = table.get(f(k))
                if i2 is not None and loc[i2] < 0:
                    loc[i2] = j
                    how[label] += 1
                    break
            else:
                how["extra"] += 1
    return loc, how


def _base(k: str) -> str:
    return k.rsplit("/", 1)[-1]


def _basestem(k: str) -> str:
    return _stem(_base(k))


@dataclass(frozen=True)
class AttachReport:
    pool: str
    pool_id: str
    out: str
    source: str
    kind: str
    n_items: int
    matched: int
    missing: int
    extra: int
    rules: dict[str, int]
    refused: list[str]
    groups_missing: list[dict[str, Any]]  # the groups with the most missing items
    groups_complete: int
    groups: int
    list_s: float
    match_s: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def attach(
    definition: PoolDefinition,
    source: Path | str,
    out: Path | str,
    *,
    kind: str | None = None,
    key_rule: KeyRule | None = None,
    definition_sha256: str | None = None,
) -> AttachReport:
    """List ``source``, match it to ``definition`` by key and write the attachment folder ``out``."""
    t0 = time.perf_counter()
    listing = list_source(Path(source), kind)
    t1 = time.perf_counter()
    loc, how = match_keys(definition.manifest.keys, listing.names, key_rule)
    t2 = time.perf_counter()
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    kept = np.flatnonzero(loc >= 0)
    order = loc[kept]  # listing rows, in definition order
    compact = np.full(len(loc), -1, dtype=np.int32)
    compact[kept] = np.arange(len(kept), dtype=np.int32)
    names = KeyTable.from_strings([listing.names[j] for j in order])
    cols = as_arrays(listing, order)
    arrays: dict[str, Any] = {"loc": compact, "names_utf8": np.frombuffer(names.blob, dtype=np.uint8), **cols}
    atomic_write(out / ATTACHMENT_FILE, lambda f: np.savez(f, **arrays))
    definition.manifest.save(out / "manifest.npz")
    fps = definition.fingerprints
    if fps is not None:
        atomic_write(out / FINGERPRINTS_FILE, lambda f: np.save(f, fps))
    else:
        (out / FINGERPRINTS_FILE).unlink(missing_ok=True)
    report = _report(definition, listing, loc, how, out, t1 - t0, t2 - t1)
    info = {
        "format": POOL_FORMAT,
        "format_version": POOL_FORMAT_VERSION,
        "kind": "attached",
        "name": definition.name,
        "pool_id": definition.pool_id,
        "n_items": len(definition),
        "image_shape": list(definition.image_shape),
        "hash_kind": definition.hash_kind,
        "group_names": list(definition.group_names) if definition.group_names else None,
        "source": str(listing.root),
        "source_kind": listing.kind,
        "containers": listing.containers,
        "columns": listing.columns,
        "definition_sha256": definition_sha256,
        "key_rule": key_rule.text if key_rule else None,
        "coverage": {k: getattr(report, k) for k in ("matched", "missing", "extra")},
    }
    atomic_write_bytes(out / "pool.json", json.dumps(info, indent=2).encode())
    return report


def _report(
    d: PoolDefinition, listing: Listing, loc: np.ndarray, how: dict[str, int], out: Path, list_s: float, match_s: float
) -> AttachReport:
    have = loc >= 0
    groups = d.manifest.groups
    missing_groups: list[dict[str, Any]] = []
    complete = n_groups = 0
    if groups is not None and len(groups):
        total = np.bincount(groups, minlength=int(groups.max()) + 1)
        got = np.bincount(groups[have], minlength=len(total))
        present = np.flatnonzero(total)
        n_groups = len(present)
        complete = int((got[present] == total[present]).sum())
        short = present[got[present] < total[present]]
        short = short[np.argsort(-(total[short] - got[short]), kind="stable")][:10]
        names = d.group_names
        for g in short:
            label = names[g] if names and g < len(names) else str(int(g))
            missing_groups.append({"group": label, "missing": int(total[g] - got[g]), "of": int(total[g])})
    return AttachReport(
        pool=d.name,
        pool_id=d.pool_id,
        out=str(out),
        source=str(listing.root),
        kind=listing.kind,
        n_items=len(d),
        matched=int(have.sum()),
        missing=int((~have).sum()),
        extra=how.pop("extra"),
        rules={k: v for k, v in how.items() if v},
        refused=listing.refused,
        groups_missing=missing_groups,
        groups_complete=complete,
        groups=n_groups,
        list_s=round(list_s, 3),
        match_s=round(match_s, 3),
    )


class AttachedPool(Pool):
    """A client's own copy, read through its attachment: positions are the definition's, bytes are local."""

    decode_bound = True
    attached = True

    def __init__(self, root: Path, info: dict[str, Any], manifest: PoolManifest) -> None:
        super().__init__(root, info, manifest)
        try:
            with np.load(root / ATTACHMENT_FILE, allow_pickle=False) as z:
                self.loc = z["loc"]
                self.names = KeyTable(z["names_utf8"].tobytes())
                self.container, self.a, self.b = z["container"], z["a"], z["b"]
        except (OSError, KeyError, ValueError) as exc:
            raise PoolError(f"cannot read the attachment of {root}: {exc}") from exc
        if len(self.loc) != len(manifest):
            raise PoolError(f"attachment of {root} does not match its definition")
        fp = root / FINGERPRINTS_FILE
        self.fingerprints = np.load(fp, allow_pickle=False) if fp.is_file() else None
        self.reader = SourceReader(
            str(info["source_kind"]),
            Path(info["source"]),
            list(info.get("containers") or []),
            info.get("columns") or {},
        )
        self._verdicts: dict[int, tuple[int, bytes]] = {}

    def local_bytes(self, i: int) -> bytes | None:
        j = int(self.loc[i])
        if j < 0:
            return None
        try:
            return self.reader.read(self.names[j], int(self.container[j]), int(self.a[j]), int(self.b[j]))
        except (OSError, IndexError):
            return None

    def item_bytes(self, i: int) -> bytes:
        data = self.local_bytes(i)
        if data is None:
            raise PoolError(f"item {i} ({self.manifest.keys[i]}) is not in this copy of {self.name}")
        return data

    def _verdict(self, i: int) -> tuple[int, bytes]:
        data = self.local_bytes(i)
        if data is None:
            return MISSING, b""
        local = item_hash(data)
        want = self.manifest.hashes[i].tobytes()
        if self.info.get("hash_kind") != "pixels" and local == want:
            return EXACT, local
        try:
            if self.info.get("hash_kind") == "pixels":
                px = self._decode(data)
                if item_hash(px.tobytes()) == want:
                    return EXACT, local
            if self.fingerprints is None:
                return DIFFERENT, local  # nothing to tell a re-encoded copy from another picture: never guess
            d = int(distance(file_fingerprint(data), self.fingerprints[i]))
        except OSError:
            return DIFFERENT, local  # does not decode: not the picture the server labelled
        return (SAME_PICTURE if d <= MATCH_DISTANCE else DIFFERENT), local

    def check(self, indices: np.ndarray, *, workers: int = 4) -> np.ndarray:
        """Status per item (``EXACT``, ``SAME_PICTURE``, ``DIFFERENT``, ``MISSING``), read and hashed (and
        fingerprinted where not exact) in threads; kept for this process."""
        idx = [int(i) for i in np.asarray(indices, dtype=np.int64)]
        todo = [i for i in idx if i not in self._verdicts]
        if todo:
            with ThreadPoolExecutor(max_workers=workers) as ex:
                for i, v in zip(todo, ex.map(self._verdict, todo), strict=True):
                    self._verdicts[i] = v
        return np.asarray([self._verdicts[i][0] for i in idx], dtype=np.int8)

    def feature_keys(self, indices: np.ndarray) -> np.ndarray:
        """What cached features are keyed by: the local bytes' hash (a re-encoded item is its own item)."""
        rows = []
        for i in np.asarray(indices, dtype=np.int64):
            v = self._verdicts.get(int(i))
            rows.append(v[1] if v and v[1] else self.manifest.hashes[int(i)].tobytes())
        return np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(-1, 16)

    def _decode(self, data: bytes) -> np.ndarray:
        return decode_image(io.BytesIO(data), self.image_shape)

    def batch(self, indices: np.ndarray) -> np.ndarray:
        h, w, c = self.image_shape
        out = np.empty((len(indices), h, w, c), dtype=np.uint8)
        for j, i in enumerate(np.asarray(indices, dtype=np.int64)):
            try:
                out[j] = self._decode(self.item_bytes(int(i)))
            except OSError as exc:
                raise PoolError(f"item {i} ({self.manifest.keys[int(i)]}) does not decode: {exc}") from exc
        return out


def _save_pass(n: int, done: int, equal: np.ndarray, f: Any) -> None:
    np.savez(f, n=n, done=done, equal=equal)


def hash_pass(
    pool: AttachedPool, *, progress: Callable[[int, int], None] | None = None, chunk: int = 65_536
) -> dict[str, int]:
    """The optional exact-hash pass over every matched item (``pool attach --hash``): how many are byte
    identical. Resumable: each finished chunk is recorded in ``hash-pass.npz`` beside the attachment."""
    state = pool.root / "hash-pass.npz"
    matched = np.flatnonzero(pool.loc >= 0)
    equal = np.zeros(len(pool), dtype=bool)
    done = 0
    if state.is_file():
        try:
            with np.load(state, allow_pickle=False) as z:
                if int(z["n"]) == len(pool):
                    done, equal = int(z["done"]), z["equal"].copy()
        except (OSError, KeyError, ValueError):
            done = 0
    want = pool.manifest.hashes

    def same(i: int) -> bool:
        data = pool.local_bytes(i)
        return data is not None and item_hash(data) == want[i].tobytes()

    with ThreadPoolExecutor(max_workers=max(2, min(16, os.cpu_count() or 1))) as ex:
        while done < len(matched):
            part = matched[done : done + chunk]
            equal[part] = list(ex.map(same, part.tolist()))
            done += len(part)
            atomic_write(state, functools.partial(_save_pass, len(pool), done, equal))
            if progress:
                progress(done, len(matched))
    return {
        "matched": len(matched),
        "identical": int(equal.sum()),
        "not_identical": int(len(matched) - equal.sum()),
    }
