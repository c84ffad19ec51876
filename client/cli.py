"""``plada-client``: pull, verify, inspect and train from payloads; run the agent; publish tasks.

Thin: parse, call the library, print. A ``PladaError`` becomes one stderr line and exit status 1; nothing
half-written is left behind (every output file is written atomically).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from plada.client.net import safe_text
from plada.shared.errors import PladaError

EXAMPLES = """examples:
  plada-client verify-pool ~/.cache/plada/world/pools/mini-v1
  plada-client tasks --server http://127.0.0.1:8000
  plada-client pull --server http://127.0.0.1:8000 --task fashion --pool POOL --out fashion.plada
  plada-client train --payload fashion.plada --pool POOL --out runs/fashion --eval test.npz
  PLADA_OFFLINE=1 plada-client train --task fashion --pool POOL --out runs/fashion
  plada-client import fashion.plada --pool POOL
  plada-client agent --server http://127.0.0.1:8000 --task fashion --pool POOL --out runs
  plada-client cache ls --json

exit status: 0 success; 1 an error (one line on stderr: "plada-client: error: CODE: message"); 2 a usage
error; 130 interrupted. Environment: PLADA_CACHE (cache folder), XDG_CACHE_HOME, PLADA_OFFLINE=1 (never
touch the network: payloads come from the cache).
"""
_OUT = {"json": False}


def _quiet() -> bool:
    """Progress bars only on a terminal: piped stderr keeps to one line per error."""
    return not sys.stderr.isatty()


def _bar(desc: str, unit: str = "") -> Callable[[float, str], None]:
    from tqdm import tqdm

    bar = tqdm(
        total=1000, desc=desc, file=sys.stderr, leave=False, bar_format="{l_bar}{bar}| {postfix}", disable=_quiet()
    )

    def update(frac: float, msg: str) -> None:
        bar.n = int(1000 * min(max(frac, 0.0), 1.0))
        bar.set_postfix_str(msg, refresh=True)
        if frac >= 1.0:
            bar.close()

    return update


def _per_class(v: str) -> int:
    n = int(v)
    if not 1 <= n <= 200:
        raise argparse.ArgumentTypeError("must be 1-200")
    return n


def _open_pool(path: str) -> Any:
    from plada.shared.pool import open_pool

    return open_pool(Path(path))


def _emit(obj: Any) -> None:
    """JSON with ``--json`` (for scripts), else a readable rendering: key: value lines or a table."""
    if _OUT["json"]:
        print(json.dumps(obj, indent=2, default=str))
        return
    if isinstance(obj, list):
        if not obj:
            print("(none)")
            return
        cols = list(obj[0])
        cells = [[_cell(r.get(c)) for c in cols] for r in obj]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
        print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip())
        for row in cells:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        return
    for k, v in obj.items():
        print(f"{safe_text(k)}: {_cell(v)}")


def _cell(v: Any) -> str:
    """One table cell, made safe to print: much of it (task names, messages, metrics) came from a server."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict | list):
        return safe_text(json.dumps(v, default=str))
    return safe_text(v)


def cmd_verify_pool(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from plada.shared.errors import PoolError
    from plada.shared.pool import verify_pool

    pool = _open_pool(args.pool)
    bar = tqdm(total=len(pool), desc="verifying", unit="img", file=sys.stderr, leave=False, disable=_quiet())

    def prog(done: int, _total: int) -> None:
        bar.n = done
        bar.refresh()

    report = verify_pool(pool, progress=prog)
    bar.close()
    if not report.ok:
        raise PoolError(
            f"{report.n_mismatched:,} of {report.n_items:,} items differ from the manifest "
            f"(first: {', '.join(report.first_mismatches[:3])})"
        )
    _emit({"pool": pool.name, "pool_id": report.pool_id, "n_items": report.n_items, "verified": True})
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from plada.shared.payload import inspect_payload

    pool = _open_pool(args.pool) if args.pool else None
    data = _read(args.file)
    info = inspect_payload(data, layout=_layout(data, pool, getattr(args, "cache", None)))
    if not args.full:
        info.pop("label_counts", None)
    info["signature"] = _signature_report(args, data)
    if args.preview or args.html:
        info["preview"] = _preview(args, data, pool)
    _emit(info)
    return 0


def _preview(args: argparse.Namespace, data: bytes, pool: Any) -> dict[str, Any]:
    """The kept pool images per class, drawn from this client's own pool copy (no pixel from the network):
    look at what a payload teaches before spending compute on it."""
    import io

    import numpy as np

    from plada.shared.errors import ClientError
    from plada.shared.files import atomic_write_bytes
    from plada.shared.payload import check_pool, decode_payload
    from plada.shared.preview import contact_html, contact_sheet, per_class_items

    if pool is None:
        raise ClientError("--preview and --html draw from the local pool: give --pool DIR")
    payload = decode_payload(data, layout=_layout(data, pool, getattr(args, "cache", None)))
    check_pool(payload, pool)
    k = len(payload.classes)
    # a payload with priority tiers says which items its server valued most: those first
    rank = None if payload.tiers is None else -np.asarray(payload.tiers, np.float64)
    order = per_class_items(payload.indices, payload.labels, k, rank)
    shown = [o[: args.per_class] for o in order]
    images = [pool.batch(o) if len(o) else np.zeros((0, *pool.image_shape), np.uint8) for o in shown]
    counts = [len(o) for o in order]
    out: dict[str, Any] = {"per_class": args.per_class, "tiles": sum(len(o) for o in shown)}
    if args.preview:
        sheet = contact_sheet(images, list(payload.classes), counts)
        buf = io.BytesIO()
        sheet.save(buf, format="PNG", optimize=True)
        atomic_write_bytes(Path(args.preview), buf.getvalue())  # never a half-written file
        out["png"], out["png_size"] = args.preview, list(sheet.size)
    if args.html:
        keys = [[str(pool.manifest.keys[i]) for i in o] for o in shown]
        title = f"{payload.task} v{payload.version} on {pool.name}"
        page = contact_html(images, list(payload.classes), counts, keys, title=title)
        atomic_write_bytes(Path(args.html), page.encode())
        out["html"] = args.html
    return out


def _sidecar(payload_file: str) -> tuple[Path, str | None]:
    """A payload file's detached signature (``FILE.sig``, written by ``pull``), if there is one."""
    path = Path(payload_file + ".sig")
    return path, (path.read_text().strip() or None) if path.is_file() else None


def _signature_report(args: argparse.Namespace, data: bytes) -> dict[str, Any]:
    """Signer and verification result of FILE's detached signature (FILE.sig), against the pinned key."""
    from plada.shared.errors import SignatureError
    from plada.shared.payload import payload_sha256

    sig_path, sig = _sidecar(args.file)
    key = _trusted(args)
    out: dict[str, Any] = {"file": str(sig_path) if sig else None, "signer": sig.split(":")[1] if sig else None}
    if key is None:
        out["verified"] = None
        out["note"] = "no key pinned (--trust / PLADA_TRUST)"
        return out
    try:
        key.verify(payload_sha256(data), sig)
        out["verified"] = True
    except SignatureError as exc:
        if args.require_signature:
            raise
        out["verified"], out["note"] = False, exc.message
    return out


def _layout(data: bytes, pool: Any, cache_dir: str | None) -> Any:
    """The coding layout a local payload file needs: the pool's own, or one the cache kept from a server."""
    from plada.client.api import resolve_layout
    from plada.client.cache import PayloadCache
    from plada.shared.payload import read_header

    if pool is None:
        return None
    return resolve_layout(read_header(data)[0], pool, PayloadCache(Path(cache_dir) if cache_dir else None))


def _client(args: argparse.Namespace, **kw: Any) -> Any:
    from plada.client.api import PladaClient

    return PladaClient(
        args.server,
        token=args.token,
        timeout=args.timeout,
        deadline=args.deadline,
        blob_base_url=getattr(args, "blob_url", None),
        **kw,
    )


def _read(path: str) -> bytes:
    from plada.shared.errors import PayloadError

    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise PayloadError(f"cannot read {path}: {exc.strerror}") from exc


def cmd_pull(args: argparse.Namespace) -> int:
    from plada.shared.files import atomic_write_bytes

    pool = _open_pool(args.pool)
    with _client(args, cache_dir=args.cache, trust=_trusted(args)) as client:
        payload = client.fetch(args.task, args.version, pool=pool)
        data = client.cache.get(payload.sha256 or "")
        if data is None:
            raise PladaError("the payload vanished from the cache while it was being written out; pull again")
        signature = client.cache.signature(payload.sha256 or "")
        trusted = client.trust is not None
    out = Path(args.out) if args.out else Path(f"{args.task}-v{payload.version}.plada")
    if signature:  # detached, beside the payload, so 'inspect' and 'import' can check it later
        atomic_write_bytes(out.with_name(out.name + ".sig"), (signature + "\n").encode())
    atomic_write_bytes(out, data)
    _emit(
        {
            "task": payload.task,
            "version": payload.version,
            "n_items": len(payload),
            "bytes": len(data),
            "pool_id": payload.pool_id,
            "file": str(out),
            "verified": True,
            "signature": "verified with the pinned key" if trusted else ("present, not checked" if signature else None),
        }
    )
    return 0


def _train_config(args: argparse.Namespace) -> Any:
    from plada.client.train import TrainConfig

    return TrainConfig(
        arch=args.arch,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        max_tier=args.max_tier,
        pretrained=args.pretrained,
        head_init=args.head_init,
        head_only=args.head_only,
        image_size=args.image_size,
        feature_cache=str(Path(args.cache) / "features") if getattr(args, "cache", None) else None,
        weights_dir=args.weights_dir or None,
        onnx=os.environ.get("PLADA_ONNX", "1") != "0",
    )


def cmd_train(args: argparse.Namespace) -> int:
    from plada.client.api import PladaClient, offline_mode
    from plada.client.train import load_eval_split, train_student
    from plada.shared.payload import check_pool, decode_payload, read_header

    pool = _open_pool(args.pool)
    if args.payload:
        data = _read(args.payload)
        check_pool(read_header(data)[0], pool)
        payload = decode_payload(data, layout=_layout(data, pool, args.cache))
    elif args.server and not offline_mode():
        with _client(args, cache_dir=args.cache, trust=_trusted(args)) as client:
            payload = client.fetch(args.task, args.version, pool=pool)
    else:  # from the cache: offline, or no server given — the client's own offline fetch (signature included)
        with PladaClient(args.server or "", cache_dir=args.cache, trust=_trusted(args), offline=True) as client:
            payload = client.fetch(args.task, args.version, pool=pool)
        why = "offline (PLADA_OFFLINE=1)" if offline_mode() else "no --server given"
        print(
            f"plada-client: {why}: training from cached payload {payload.task} v{payload.version} "
            f"({(payload.sha256 or '')[:12]}…)",
            file=sys.stderr,
        )
    split = load_eval_split(Path(args.eval), list(payload.classes)) if args.eval else None
    metrics = train_student(
        payload, pool, Path(args.out), _train_config(args), eval_split=split, progress=_bar("training")
    )
    _emit(metrics)
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:

    with _client(args) as client:
        rows = [
            {
                "task": t.name,
                "pool": t.pool_name,
                "classes": len(t.classes),
                "latest": t.latest_version,
                "updated": t.updated_at.isoformat(timespec="seconds"),
            }
            for t in client.tasks()
        ]
    _emit(rows)
    return 0


def cmd_versions(args: argparse.Namespace) -> int:

    with _client(args) as client:
        rows = []
        for v in client.versions(args.task):
            val = v.metrics.get("validation", {})
            rows.append(
                {
                    "version": v.version,
                    "status": v.status,
                    "bytes": v.size_bytes,
                    "items": v.n_items,
                    "selection": v.metrics.get("selection", {}).get("label"),
                    "predicted_acc": val.get("predicted_client_accuracy"),
                    "reported_acc": v.metrics.get("reports", {}).get("mean_accuracy"),
                    "sha256": v.sha256,
                }
            )
    _emit(rows)
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from plada.client.cache import PayloadCache

    cache = PayloadCache(Path(args.cache) if args.cache else None)
    if args.cache_command == "ls":
        rows = cache.entries()
        if not _OUT["json"]:
            rows = [{k: r.get(k) for k in ("task", "version", "bytes", "ok", "sha256", "refs")} for r in rows]
        _emit(rows)
        return 0
    removed = cache.prune(everything=args.all, dry_run=args.dry_run)
    _emit(
        {"cache": str(cache.root), "removed": len(removed), "dry_run": args.dry_run, "files": [str(p) for p in removed]}
    )
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from plada.client.cache import PayloadCache
    from plada.shared.payload import check_pool, decode_payload, read_header

    data = _read(args.file)
    header = read_header(data)[0]
    pool = _open_pool(args.pool) if args.pool else None
    if pool is not None:
        check_pool(header, pool)
    payload = decode_payload(data, layout=_layout(data, pool, args.cache))  # full verification
    _, signature = _sidecar(args.file)
    key = _trusted(args)
    if key is not None:  # a pinned key: the detached signature must verify, or nothing is imported
        key.verify(payload.sha256 or "", signature)
    cache = PayloadCache(Path(args.cache) if args.cache else None)
    sha = cache.import_bytes(data, task=payload.task, version=payload.version)
    if signature:
        cache.put_signature(sha, signature)
    _emit(
        {
            "task": payload.task,
            "version": payload.version,
            "n_items": len(payload),
            "sha256": sha,
            "pool_checked": pool is not None,
            "cache": str(cache.root),
        }
    )
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    from plada.client.agent import Agent, AgentConfig

    pool = _open_pool(args.pool)
    evals = dict(item.split("=", 1) for item in args.eval)
    cfg = AgentConfig(
        tasks=args.task,
        out_dir=Path(args.out),
        poll_s=args.poll,
        train=_train_config(args),
        eval_splits={k: Path(v) for k, v in evals.items()},
        report=not args.no_report,
        wait_s=args.long_poll,
        **({"client_id": args.client_id} if args.client_id else {}),
    )
    with _client(args, cache_dir=args.cache, trust=_trusted(args)) as client:
        agent = Agent(client, pool, cfg)
        signal.signal(signal.SIGTERM, agent.stop)
        signal.signal(signal.SIGINT, agent.stop)
        done = agent.run(max_rounds=1 if args.once else args.max_rounds)
    _emit({"trained": done})
    return 0


def read_spec(text: str) -> Any:
    """``--spec``: inline JSON of any length, ``@FILE``, or a path to a JSON file. JSON is recognised by its
    first character, so a long inline spec is never tried as a file name (``File name too long``)."""
    from plada.shared.errors import InvalidSpecError

    raw = text
    if text.lstrip().startswith(("{", "[")):
        source = "inline --spec"
    else:
        path = Path(text[1:] if text.startswith("@") else text).expanduser()
        try:
            raw = path.read_text()
        except OSError as exc:
            raise InvalidSpecError(f"--spec {text!r} is neither inline JSON nor a readable file: {exc}") from exc
        source = str(path)
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidSpecError(f"{source} is not valid JSON: {exc}") from exc


def cmd_publish(args: argparse.Namespace) -> int:

    spec = read_spec(args.spec)
    with _client(args) as client:
        resp = client.publish(spec, Path(args.data))
        if args.wait:
            bar = _bar(f"publishing {resp.task} v{resp.version}")
            client.wait_job(resp.job.id, on_progress=lambda j: bar(j.progress, j.message))
            _emit(client.version(resp.task, resp.version).model_dump(mode="json"))
        else:
            _emit(resp.model_dump(mode="json"))
    return 0


def _server_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--server", required=required, help="base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--token", default=None, help="bearer token (when the server asks for one)")
    _trust_arg(p)
    p.add_argument(
        "--timeout", type=float, default=30.0, help="seconds each network read, write or connect may take (30)"
    )
    p.add_argument(
        "--deadline",
        type=float,
        default=300.0,
        help="seconds one call to the server may take in all, retries included (300): a server that trickles "
        "bytes cannot stall the client",
    )
    p.add_argument(
        "--blob-url",
        default=None,
        help="also follow payload redirects under this URL (the server's PLADA_BLOB_BASE_URL, a CDN; default "
        "$PLADA_BLOB_BASE_URL); this server's own origin is always followed, any other refused",
    )


def _trust_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trust",
        default=None,
        help="pin the server's public key (ed25519:...; default $PLADA_TRUST): unsigned or mis-signed payloads "
        "are refused",
    )


def _trusted(args: argparse.Namespace) -> Any:
    from plada.shared.signing import PublicKey

    text = getattr(args, "trust", None) or os.environ.get("PLADA_TRUST")
    return PublicKey.parse(text) if text else None


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default="smallcnn", help="smallcnn or a timm model name")
    p.add_argument(
        "--pretrained",
        action="store_true",
        help="start the timm --arch from local ImageNet weights and fine-tune every layer (AdamW, cosine)",
    )
    p.add_argument(
        "--head-init",
        choices=["zero", "probe"],
        default="zero",
        help="--pretrained: start the classifier at zero (the paper's recipe) or from the head-only probe (LP-FT)",
    )
    p.add_argument(
        "--head-only",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="freeze a pretrained backbone (--arch; default efficientnet_lite0), embed the payload's items once "
        "(cached by item hash) and fit a linear head: seconds on a laptop CPU (default: on for RGB pools when the "
        "weights are installed and neither --arch nor --pretrained is given)",
    )
    p.add_argument(
        "--image-size", type=int, default=None, help="model input side (default: the pool's; pretrained: 128-224)"
    )
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--weights-dir",
        default=os.environ.get("PLADA_WEIGHTS_DIR", ""),
        help="folder of local pretrained weights (<arch>.pth or .safetensors; default $PLADA_WEIGHTS_DIR, then "
        "weights packages); nothing is downloaded",
    )
    p.add_argument("--max-tier", type=int, default=None, help="train on priority tiers 0..N only (less compute)")


def build_parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(add_help=False)
    top.add_argument("--json", action="store_true", help="machine-readable JSON on stdout (for scripts)")
    # accepted after the subcommand too; SUPPRESS keeps a sub-parser's default from undoing a leading --json
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable JSON")
    parser = argparse.ArgumentParser(
        prog="plada-client",
        description="plada client: pull payloads, verify them against your pool, train students.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[top],
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help: str, example: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help,
            description=help[0].upper() + help[1:] + ".",
            epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[common],
        )

    p = add(
        "verify-pool",
        "re-hash every item of a local pool and print its pool_id",
        "plada-client verify-pool ~/.cache/plada/world/pools/mini-v1",
    )
    p.add_argument("pool", help="pool folder")
    p.set_defaults(fn=cmd_verify_pool)
    p = add("tasks", "list the server's tasks", "plada-client tasks --server http://127.0.0.1:8000")
    _server_args(p)
    p.set_defaults(fn=cmd_tasks)
    p = add(
        "versions",
        "list a task's versions with bytes, selection and predicted/reported accuracy",
        "plada-client versions --server http://127.0.0.1:8000 --task fashion",
    )
    _server_args(p)
    p.add_argument("--task", required=True)
    p.set_defaults(fn=cmd_versions)
    p = add("inspect", "print a payload file's header (verifies it too)", "plada-client inspect fashion.plada --full")
    p.add_argument("file")
    p.add_argument("--full", action="store_true", help="include per-class label counts")
    p.add_argument("--pool", help="the payload's pool: needed to decode payloads coded in the pool's group order")
    p.add_argument("--cache", help="cache folder with layouts fetched from servers (default $PLADA_CACHE)")
    _trust_arg(p)
    p.add_argument("--require-signature", action="store_true", help="exit 1 unless FILE.sig verifies (--trust)")
    p.add_argument("--preview", metavar="PNG", help="draw the kept pool images per class from --pool into this PNG")
    p.add_argument("--html", metavar="FILE", help="the same as one self-contained HTML page (alt text = pool key)")
    p.add_argument("--per-class", type=_per_class, default=16, help="images drawn per class (1-200, default 16)")
    p.set_defaults(fn=cmd_inspect)
    p = add(
        "pull",
        "download, verify and cache a task's payload",
        "plada-client pull --server http://127.0.0.1:8000 --task fashion --pool POOL --out fashion.plada",
    )
    _server_args(p)
    p.add_argument("--task", required=True)
    p.add_argument("--version", default="latest")
    p.add_argument("--pool", required=True, help="local pool folder (must match the payload's pool_id)")
    p.add_argument("--out", help="payload file to write (default TASK-vN.plada)")
    p.add_argument("--cache", help="cache folder (default $PLADA_CACHE or ~/.cache/plada)")
    p.set_defaults(fn=cmd_pull)
    p = add(
        "train",
        "train a student on a payload (a file, or a task from the server or the cache)",
        "plada-client train --payload fashion.plada --pool POOL --out runs/fashion --eval test.npz",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--payload", help="payload file")
    src.add_argument("--task", help="task name: fetched from --server, or from the cache when offline")
    p.add_argument("--version", default="latest", help="with --task")
    _server_args(p, required=False)
    p.add_argument("--cache", help="cache folder (default $PLADA_CACHE or ~/.cache/plada)")
    p.add_argument("--pool", required=True)
    p.add_argument("--out", required=True, help="run folder: checkpoint.pt, model.pt, metrics.json")
    p.add_argument(
        "--eval", help="client test split to report accuracy on: .npz (x, y[, classes]) or a .zip of <class>/<image>"
    )
    _train_args(p)
    p.set_defaults(fn=cmd_train)
    p = add(
        "agent",
        "follow tasks, train every new version once and report the result to the server",
        "plada-client agent --server http://127.0.0.1:8000 --task fashion --pool POOL --out runs",
    )
    _server_args(p)
    p.add_argument("--task", action="append", required=True, help="task to follow (repeatable)")
    p.add_argument("--pool", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--eval", action="append", default=[], help="TASK=test.npz (repeatable)")
    p.add_argument("--poll", type=float, default=30.0, help="seconds between polls")
    p.add_argument(
        "--long-poll",
        type=float,
        default=0.0,
        help="hold each poll open up to this many seconds (max 60) so a new version arrives at once (0: plain polls)",
    )
    p.add_argument("--once", action="store_true", help="one polling round, then exit")
    p.add_argument("--max-rounds", type=int, default=None)
    p.add_argument("--cache")
    p.add_argument("--client-id", default=None, help="name in reports to the server (default: the host name)")
    p.add_argument("--no-report", action="store_true", help="do not post training results to the server")
    _train_args(p)
    p.set_defaults(fn=cmd_agent)
    p = add(
        "publish",
        "publish a task: a spec (JSON or file) and a .npz/.zip data file",
        "plada-client publish --server URL --spec spec.json --data train.npz --wait",
    )
    _server_args(p)
    p.add_argument("--spec", required=True, help="task spec: inline JSON (any length), @FILE or a JSON file path")
    p.add_argument("--data", required=True)
    p.add_argument("--wait", action="store_true", help="wait for the job and print the version")
    p.set_defaults(fn=cmd_publish)
    p = add(
        "import",
        "verify a payload that arrived by other means (USB, e-mail) and add it to the cache",
        "plada-client import fashion-v3.plada --pool POOL",
    )
    p.add_argument("file")
    p.add_argument("--pool", help="check it against this pool (pool_id, coding layout) before accepting it")
    p.add_argument("--cache", help="cache folder (default $PLADA_CACHE or ~/.cache/plada)")
    _trust_arg(p)
    p.set_defaults(fn=cmd_import)
    p = add("cache", "list or prune the local payload cache", "plada-client cache prune --dry-run")
    csub = p.add_subparsers(dest="cache_command", required=True)
    for name, hlp in (("ls", "list cached payloads"), ("prune", "remove unreferenced or damaged payloads")):
        c = csub.add_parser(name, help=hlp, description=hlp[0].upper() + hlp[1:] + ".", parents=[common])
        c.add_argument("--cache", help="cache folder (default $PLADA_CACHE or ~/.cache/plada)")
        if name == "prune":
            c.add_argument("--all", action="store_true", help="empty the whole cache")
            c.add_argument("--dry-run", action="store_true", help="only list what would be removed")
        c.set_defaults(fn=cmd_cache)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _OUT["json"] = bool(args.json)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return int(args.fn(args))
    except PladaError as exc:
        print(f"plada-client: error: {exc.code}: {safe_text(exc.message)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # never a traceback (PLADA_DEBUG=1 shows one): one line, exit status 1
        if os.environ.get("PLADA_DEBUG"):
            raise
        print(f"plada-client: error: {type(exc).__name__}: {safe_text(exc, 500)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
