"""A long hand-fuzz of the publish and report routes: random and mutated uploads, specs and report bodies
against a real server (uvicorn, SQLite, auth on). Counts answers by status; the only acceptable 5xx count is 0.

    python bench/fuzz_inputs.py [--requests 2000] [--seed 0]

Each request is one of: a valid npz/zip upload with random byte flips, truncation or appended junk; an archive
built to be hostile (many members, lying headers, nested folders, odd image formats, 16-bit and huge images);
a random or mutated spec (wrong types, huge numbers, deep nesting, unicode); a report body mutated the same
way, on a real version; with a random choice of token (none, read, another owner, the owner). Prints a table of
status codes per kind and exits 1 on any 5xx (the server's log then has the traceback).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import tempfile
import zipfile
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from plada.shared.datasets.mini import build_mini_world, default_world_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # harness/ lives beside the packages (not shipped)
from harness.local import LocalStack

SPEC = {"name": "fuzz", "classes": ["a", "b"], "pool_id": "mini-v1", "keep": 0.01, "teacher": {"epochs": 1}}


def _npz(rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    n = int(rng.integers(4, 40))
    np.savez(buf, x=rng.integers(0, 255, (n, 28, 28), dtype=np.uint8), y=np.arange(n) % 2)
    return buf.getvalue()


def _image(rng: np.random.Generator, fmt: str) -> bytes:
    from PIL import Image

    size = (int(rng.integers(1, 64)), int(rng.integers(1, 64)))
    mode = random.choice(["L", "RGB", "RGBA", "P", "I;16", "1", "CMYK"])
    if fmt in ("JPEG",) and mode not in ("L", "RGB", "CMYK"):
        mode = "RGB"
    img = Image.new(mode if mode != "I;16" else "I;16", size)
    buf = io.BytesIO()
    try:
        img.save(buf, format=fmt)
    except (OSError, ValueError, KeyError):
        img.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def _zip(rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", random.choice([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])) as zf:
        for i in range(int(rng.integers(1, 12))):
            fmt = random.choice(["PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "ICO", "PPM", "EPS-ish"])
            folder = random.choice(["a", "b", "c", "a/b", "../a", "", "\u00e9", "a\\b"])
            data = b"%!PS-Adobe-3.0 EPSF-3.0\n" if fmt == "EPS-ish" else _image(rng, fmt)
            zf.writestr(f"{folder}/{i}.{fmt.lower()}" if folder else f"{i}.img", data)
    return buf.getvalue()


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(data)
    kind = int(rng.integers(0, 5))
    if kind == 0 and b:
        for _ in range(int(rng.integers(1, 20))):
            b[int(rng.integers(0, len(b)))] = int(rng.integers(0, 256))
    elif kind == 1 and b:
        b = b[: int(rng.integers(0, len(b)))]
    elif kind == 2:
        b += bytes(rng.integers(0, 256, int(rng.integers(1, 500)), dtype=np.uint8))
    elif kind == 3 and len(b) > 30:  # damage the end-of-central-directory record
        at = bytes(b).rfind(b"PK\x05\x06")
        if at >= 0:
            b[at + 8 : at + 22] = bytes(rng.integers(0, 256, 14, dtype=np.uint8))
    return bytes(b)


def _value(rng: np.random.Generator, depth: int = 0) -> object:
    r = int(rng.integers(0, 10))
    if depth > 3 or r < 3:
        return random.choice(
            [
                0,
                -1,
                1,
                2**63,
                -(2**63),
                10**30,
                1e308,
                -1e-308,
                0.5,
                "",
                "x" * 300,
                "\u0000",
                "\U0001d160" * 70,
                True,
                None,
            ]
        )
    if r < 6:
        return [_value(rng, depth + 1) for _ in range(int(rng.integers(0, 4)))]
    return {random.choice(["a", "seed", "epochs", "name", "lr"]): _value(rng, depth + 1) for _ in range(2)}


def _spec(rng: np.random.Generator) -> str:
    r = int(rng.integers(0, 8))
    if r == 0:
        return "[" * int(rng.integers(1, 5000)) + "]" * int(rng.integers(0, 5000))
    if r == 1:
        return json.dumps(_value(rng))
    spec = json.loads(json.dumps(SPEC))
    key = random.choice(
        ["name", "classes", "pool_id", "keep", "max_bytes", "tiers", "access", "codec", "selector", "teacher"]
    )
    spec[key] = _value(rng)
    if r == 2:
        spec["classes"] = [
            random.choice(["a", "b", "caf\u00e9", "cafe\u0301", "\U0001d160" * 66]) + str(i)
            for i in range(int(rng.integers(2, 3000)))
        ]
    return json.dumps(spec, ensure_ascii=bool(rng.integers(0, 2)))


def _report(rng: np.random.Generator) -> bytes:
    good = {"client_id": "fuzz", "student_arch": "smallcnn", "epochs": 1, "wall_s": 1.0, "accuracy": 0.5}
    r = int(rng.integers(0, 4))
    if r == 0:
        return json.dumps(_value(rng)).encode()
    if r == 1:
        return _mutate(json.dumps(good).encode(), rng)
    if r == 2:
        return b"{" * int(rng.integers(1, 30000))
    good[random.choice([*good, "extra", "n_test"])] = _value(rng)  # type: ignore[assignment]
    return json.dumps(good).encode()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    random.seed(args.seed)
    world = default_world_dir()
    build_mini_world(world, log=lambda _m: None)
    counts: dict[str, Counter[int]] = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalStack(
            data_dir=Path(tmp) / "data",
            pools_dir=world / "pools",
            log_dir=Path(tmp) / "logs",
            env={
                "PLADA_PUBLISH_RATE_PER_MIN": "100000",
                "PLADA_REPORT_RATE_PER_MIN": "100000",
                "PLADA_MAX_UPLOAD_BYTES": "5000000",
            },
        ) as stack,
    ):
        stack.start_server()
        owner = stack.token("publish", "fuzz-owner")
        tokens = [None, stack.token("read"), stack.token("publish", "other"), owner, owner, owner]
        ok = httpx.post(
            f"{stack.url}/v1/tasks",
            data={"spec": json.dumps(SPEC)},
            files={"data": ("d.npz", _npz(rng))},
            headers={"Authorization": f"Bearer {owner}"},
            timeout=60,
        )
        assert ok.status_code == 202, ok.text
        import sqlite3

        db = sqlite3.connect(Path(tmp) / "data" / "plada.db")
        with db:  # a ready version takes reports (no worker runs here)
            db.execute("UPDATE versions SET status = 'ready', sha256 = ?", ("0" * 64,))
        db.close()
        with httpx.Client(timeout=60) as http:
            for i in range(args.requests):
                tok = tokens[int(rng.integers(0, len(tokens)))]
                headers = {"Authorization": f"Bearer {tok}"} if tok else {}
                kind = random.choice(["npz", "zip", "spec", "report", "report"])
                try:
                    resp = _send(http, stack, kind, headers, rng)
                except httpx.TransportError as exc:
                    counts.setdefault(kind, Counter())[0] += 1
                    print(f"no answer to request {i} ({kind}): {type(exc).__name__}", file=sys.stderr)
                    if stack.server is not None and stack.server.poll() is not None:
                        print("the server died; its log:\n" + _tail(Path(tmp) / "logs"), file=sys.stderr)
                        return 1
                    continue
                counts.setdefault(kind, Counter())[resp.status_code] += 1
                if resp.status_code >= 500:
                    print(f"5xx on request {i} ({kind}): {resp.text[:300]}", file=sys.stderr)
                    print(_tail(Path(tmp) / "logs"), file=sys.stderr)
    return _table(counts, args.requests)


def _tail(logs: Path) -> str:
    text = "".join(p.read_text(errors="replace") for p in sorted(logs.glob("*.log")))
    return text[-4000:]


def _send(
    http: httpx.Client, stack: LocalStack, kind: str, headers: dict[str, str], rng: np.random.Generator
) -> httpx.Response:
    if kind == "report":
        return http.post(
            f"{stack.url}/v1/tasks/fuzz/versions/1/reports",
            content=_report(rng),
            headers=headers | {"Content-Type": "application/json"},
        )
    data = _npz(rng) if kind in ("npz", "spec") else _zip(rng)
    if kind != "spec" or rng.integers(0, 2):
        data = _mutate(data, rng) if rng.integers(0, 3) else data
    spec = _spec(rng) if kind == "spec" else json.dumps(SPEC)
    return http.post(
        f"{stack.url}/v1/tasks",
        data={"spec": spec},
        files={"data": (random.choice(["d.npz", "d.zip", "../x", ""]), data)},
        headers=headers,
    )


def _table(counts: dict[str, Counter[int]], n: int) -> int:
    statuses = sorted({s for c in counts.values() for s in c})
    print("| kind | requests | " + " | ".join(str(s) for s in statuses) + " |")
    print("|---|---|" + "---|" * len(statuses))
    for kind, c in sorted(counts.items()):
        print(f"| {kind} | {sum(c.values())} | " + " | ".join(str(c.get(s, 0)) for s in statuses) + " |")
    n5xx = sum(k for c in counts.values() for s, k in c.items() if s >= 500 or s == 0)
    print(f"\n{n} requests, {n5xx} answered 5xx (status 0: no answer)")
    return 1 if n5xx else 0


if __name__ == "__main__":
    sys.exit(main())
