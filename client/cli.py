"""``plada-client``: pull, verify, inspect and train from payloads; run the agent; publish tasks.

Thin: parse, call the library, print. A ``PladaError`` becomes one stderr line and exit status 1; nothing
half-written is left behind (every output file is written atomically).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from plada.shared.errors import PladaError

EXAMPLES = """examples:
  plada-client verify-pool ~/.cache/plada/world/pools/mini-v1
  plada-client pull --server http://127.0.0.1:8000 --task fashion --pool POOL --out fashion.plada
  plada-client train --payload fashion.plada --pool POOL --out runs/fashion --eval test.npz
  plada-client agent --server http://127.0.0.1:8000 --task fashion --pool POOL --out runs
"""


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


def _open_pool(path: str) -> Any:
    from plada.shared.pool import open_pool

    return open_pool(Path(path))


def _emit(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


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
    info = inspect_payload(_read(args.file), layout=pool.layout if pool is not None else None)
    if not args.full:
        info.pop("label_counts", None)
    _emit(info)
    return 0


def _read(path: str) -> bytes:
    from plada.shared.errors import PayloadError

    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise PayloadError(f"cannot read {path}: {exc.strerror}") from exc


def cmd_pull(args: argparse.Namespace) -> int:
    from plada.client.api import PladaClient
    from plada.client.cache import PayloadCache
    from plada.shared.pool import atomic_write_bytes

    pool = _open_pool(args.pool)
    with PladaClient(args.server, token=args.token) as client:
        payload, data = client.fetch(
            args.task, args.version, pool=pool, cache=PayloadCache(Path(args.cache)) if args.cache else PayloadCache()
        )
    out = Path(args.out) if args.out else Path(f"{args.task}-v{payload.version}.plada")
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
    )


def cmd_train(args: argparse.Namespace) -> int:
    from plada.client.api import check_pool
    from plada.client.train import load_eval_split, train_student
    from plada.shared.payload import decode_payload, read_header

    data = _read(args.payload)
    pool = _open_pool(args.pool)
    check_pool(read_header(data)[0], pool)
    payload = decode_payload(data, layout=pool.layout)
    split = load_eval_split(Path(args.eval), list(payload.classes)) if args.eval else None
    metrics = train_student(
        payload,
        pool,
        Path(args.out),
        _train_config(args),
        eval_split=split,
        payload_bytes=data,
        progress=_bar("training"),
    )
    _emit(metrics)
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    from plada.client.agent import Agent, AgentConfig
    from plada.client.api import PladaClient
    from plada.client.cache import PayloadCache

    pool = _open_pool(args.pool)
    evals = dict(item.split("=", 1) for item in args.eval)
    cfg = AgentConfig(
        tasks=args.task,
        out_dir=Path(args.out),
        poll_s=args.poll,
        train=_train_config(args),
        eval_splits={k: Path(v) for k, v in evals.items()},
    )
    with PladaClient(args.server, token=args.token) as client:
        agent = Agent(client, pool, cfg, cache=PayloadCache(Path(args.cache)) if args.cache else None)
        signal.signal(signal.SIGTERM, agent.stop)
        signal.signal(signal.SIGINT, agent.stop)
        done = agent.run(max_rounds=1 if args.once else args.max_rounds)
    _emit({"trained": done})
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from plada.client.api import PladaClient

    spec = json.loads(Path(args.spec).read_text()) if Path(args.spec).is_file() else json.loads(args.spec)
    with PladaClient(args.server, token=args.token) as client:
        resp = client.publish(spec, Path(args.data))
        if args.wait:
            bar = _bar(f"publishing {resp.task} v{resp.version}")
            client.wait_job(resp.job.id, on_progress=lambda j: bar(j.progress, j.message))
            _emit(client.version(resp.task, resp.version).model_dump(mode="json"))
        else:
            _emit(resp.model_dump(mode="json"))
    return 0


def _server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", required=True, help="base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--token", default=None, help="bearer token (when the server asks for one)")


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default="smallcnn", help="smallcnn or a timm model name")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--max-tier", type=int, default=None, help="train on priority tiers 0..N only (less compute)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plada-client",
        description="plada client: pull payloads and train.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("verify-pool", help="re-hash every item of a local pool; print its pool_id")
    p.add_argument("pool")
    p.set_defaults(fn=cmd_verify_pool)
    p = sub.add_parser("inspect", help="print a payload file's header as JSON (verifies it too)")
    p.add_argument("file")
    p.add_argument("--full", action="store_true", help="include per-class label counts")
    p.add_argument("--pool", help="the payload's pool: needed to decode payloads coded in the pool's group order")
    p.set_defaults(fn=cmd_inspect)
    p = sub.add_parser("pull", help="download, verify and cache a task's payload")
    _server_args(p)
    p.add_argument("--task", required=True)
    p.add_argument("--version", default="latest")
    p.add_argument("--pool", required=True, help="local pool folder (must match the payload's pool_id)")
    p.add_argument("--out", help="payload file to write (default TASK-vN.plada)")
    p.add_argument("--cache", help="cache folder (default $PLADA_CACHE or ~/.cache/plada)")
    p.set_defaults(fn=cmd_pull)
    p = sub.add_parser("train", help="train a student on a payload over the local pool")
    p.add_argument("--payload", required=True)
    p.add_argument("--pool", required=True)
    p.add_argument("--out", required=True, help="run folder: checkpoint.pt, model.pt, metrics.json")
    p.add_argument("--eval", help="client test split .npz (x, y[, classes]) to report accuracy on")
    _train_args(p)
    p.set_defaults(fn=cmd_train)
    p = sub.add_parser("agent", help="follow tasks and train every new version once")
    _server_args(p)
    p.add_argument("--task", action="append", required=True, help="task to follow (repeatable)")
    p.add_argument("--pool", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--eval", action="append", default=[], help="TASK=test.npz (repeatable)")
    p.add_argument("--poll", type=float, default=30.0, help="seconds between polls")
    p.add_argument("--once", action="store_true", help="one polling round, then exit")
    p.add_argument("--max-rounds", type=int, default=None)
    p.add_argument("--cache")
    _train_args(p)
    p.set_defaults(fn=cmd_agent)
    p = sub.add_parser("publish", help="publish a task: a spec (JSON or file) and a .npz/.zip data file")
    _server_args(p)
    p.add_argument("--spec", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--wait", action="store_true", help="wait for the job and print the version")
    p.set_defaults(fn=cmd_publish)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return int(args.fn(args))
    except PladaError as exc:
        print(f"plada-client: error: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except (json.JSONDecodeError, ValueError, OSError) as exc:
        print(f"plada-client: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
