"""``plada-server``: serve the API, run a worker, build and register pools.

Thin: parse arguments, build Settings (flags override ``PLADA_*`` variables), call the library, and turn any
``PladaError`` into one stderr line and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from plada.shared.errors import PladaError

EXAMPLES = """examples:
  plada-server pool build mini-v1 --out ~/.cache/plada/world
  PLADA_POOLS_DIR=~/.cache/plada/world/pools plada-server serve --port 8000
  plada-server worker
"""


def _settings(args: argparse.Namespace) -> Any:
    from plada.server.settings import Settings

    overrides = {
        k: v
        for k, v in {
            "data_dir": getattr(args, "data_dir", None),
            "database_url": getattr(args, "database_url", None),
            "pools_dir": getattr(args, "pools_dir", None),
            "host": getattr(args, "host", None),
            "port": getattr(args, "port", None),
            "device": getattr(args, "device", None),
        }.items()
        if v is not None
    }
    return Settings(**overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from plada.server.app import create_app
    from plada.server.logs import configure

    settings = _settings(args)
    json_logs = settings.log_format == "json"
    configure(settings.log_format, getattr(logging, args.log_level.upper()))
    if args.workers > 1:
        if args.port_file or settings.port == 0:
            raise PladaError("--workers N needs a fixed --port (several processes share it; no --port-file)")
        # each worker process builds its own app from the environment: hand the flags down as PLADA_* variables
        os.environ.update(
            {
                "PLADA_DATA_DIR": str(settings.data_dir),
                "PLADA_DATABASE_URL": settings.database_url,
                "PLADA_POOLS_DIR": str(settings.pools_dir),
            }
        )
        uvicorn.run(
            "plada.server.app:app_from_env",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=args.workers,
            log_level=args.log_level,
            access_log=args.access_log and not json_logs,
            log_config=None,
        )
        return 0
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        # JSON: the app's own request line (route template, status, ms) replaces uvicorn's access log
        access_log=args.access_log and not json_logs,
        log_config=None,
    )
    _port_server(config, Path(args.port_file) if args.port_file else None).run()
    return 0


def _port_server(config: Any, port_file: Path | None) -> Any:
    """A uvicorn.Server that writes the bound port to a file once listening (for ``--port 0``)."""
    import uvicorn

    from plada.shared.files import atomic_write_bytes

    class PortServer(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if port_file is not None and self.servers:
                port = self.servers[0].sockets[0].getsockname()[1]
                atomic_write_bytes(port_file, str(port).encode())

    return PortServer(config)


def cmd_worker(args: argparse.Namespace) -> int:
    from plada.server.pools import register_pools
    from plada.server.worker import Worker

    settings = _settings(args)
    worker = Worker(settings)
    register_pools(worker.factory, settings)
    worker.run(once=args.once, max_idle_s=args.max_idle)
    return 0


def _progress_printer(label: str) -> Callable[[int, int], None]:
    from tqdm import tqdm

    bar: dict[str, Any] = {}

    def update(done: int, total: int) -> None:
        if "b" not in bar:
            bar["b"] = tqdm(
                total=total, desc=label, unit="img", file=sys.stderr, leave=False, disable=not sys.stderr.isatty()
            )
        bar["b"].n = done
        bar["b"].refresh()
        if done >= total:
            bar["b"].close()

    return update


def cmd_pool_build(args: argparse.Namespace) -> int:
    from plada.shared.datasets import mini, photo

    out = Path(args.out).expanduser()
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    if args.name == mini.POOL_NAME:
        pool = mini.build_mini_world(out, log=log)
    elif args.name == photo.POOL_NAME:
        if not args.source:
            raise PladaError(f"pool {photo.POOL_NAME!r} is built from a folder of zips: add --from DIR")
        pool = photo.build_photo_world(Path(args.source), out, log=log)
    else:
        raise PladaError(
            f"the built-in worlds are {mini.POOL_NAME!r} and {photo.POOL_NAME!r} (with --from DIR); index your own "
            f"images with 'plada-server pool index-folder'"
        )
    print(
        json.dumps(
            {
                "pool": pool.name,
                "pool_id": pool.pool_id,
                "n_items": len(pool),
                "pool_dir": str(out / "pools" / pool.name),
                "tasks_dir": str(out / "tasks"),
            },
            indent=2,
        )
    )
    return 0


def cmd_pool_index(args: argparse.Namespace) -> int:
    from plada.shared.pool import index_image_folder, index_tar_shards

    where = (Path(args.source), Path(args.out), args.name)
    shape = {"image_size": args.image_size, "channels": args.channels}
    if args.pool_command == "index-tars":
        pool = index_tar_shards(*where, **shape, progress=_progress_printer("shards"))
    else:
        pool = index_image_folder(*where, **shape, workers=args.workers, progress=_progress_printer("hashing"))
    print(json.dumps({"pool": pool.name, "pool_id": pool.pool_id, "n_items": len(pool)}, indent=2))
    return 0


def cmd_pool_cluster(args: argparse.Namespace) -> int:
    from plada.server.pipeline.clusters import pixel_clusters
    from plada.shared.pool import open_pool

    pool = open_pool(Path(args.dir))
    layout = pool.set_clusters(pixel_clusters(pool, k=args.k, seed=args.seed))
    print(json.dumps({"pool": pool.name, "pool_id": pool.pool_id, "clusters": args.k, "layout_id": layout.layout_id}))
    return 0


def cmd_key_show(args: argparse.Namespace) -> int:
    from plada.shared.signing import load_or_create_key

    settings = _settings(args)
    key = load_or_create_key(settings.signing_key)
    pub = key.public
    print(
        json.dumps(
            {
                "algorithm": "ed25519",
                "public_key": pub.text,
                "key_id": pub.key_id,
                "key_file": str(settings.signing_key),
            },
            indent=2,
        )
    )
    return 0


def cmd_pool_embed(args: argparse.Namespace) -> int:
    from plada.server.pipeline.features import (
        build_feature_index,
        build_pretrained_index,
        default_backbone,
        open_feature_index,
    )
    from plada.shared.pool import open_pool

    config = _settings(args).run_config()  # device (--device), weights folder, executor, ONNX: the worker's
    pool = open_pool(Path(args.dir))
    index = None if args.force else open_feature_index(pool, args.name)
    reused = index is not None
    if index is None:
        bar = _progress_printer("embedding")
        arch = default_backbone(pool, config.weights_dir) if args.arch == "auto" else args.arch
        if arch is not None and arch != "smallcnn":
            index = build_pretrained_index(
                pool,
                args.name,
                arch=arch,
                image_size=args.image_size,
                config=config,
                progress=lambda f, _m: bar(round(1000 * f), 1000),
            )
        else:
            index = build_feature_index(
                pool,
                args.name,
                epochs=args.epochs,
                train_items=args.train_items,
                seed=args.seed,
                config=config,
                progress=lambda f, _m: bar(round(1000 * f), 1000),
            )
    print(json.dumps({"pool": pool.name, "index": index.name, "reused": reused, **index.info}, indent=2))
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from plada.server import auth
    from plada.server.db import init_db, make_engine

    settings = _settings(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    factory = init_db(make_engine(settings.database_url))
    with factory.begin() as s:
        if args.token_command == "create":
            try:
                row, plain = auth.create_token(session=s, name=args.name, scope=args.scope, owner=args.owner)
            except ValueError as exc:
                raise PladaError(f"--owner {args.owner!r}: {exc}") from exc
            out: Any = {
                "id": row.id,
                "name": row.name,
                "scope": row.scope,
                "owner": row.owner,
                "token": plain,
                "note": "shown once: store it now (only its hash is kept)",
            }
        elif args.token_command == "list":
            out = [
                {
                    "id": r.id,
                    "name": r.name,
                    "scope": r.scope,
                    "owner": r.owner,
                    "revoked": r.revoked,
                    "last_used_at": r.last_used_at,
                }
                for r in auth.list_tokens(session=s)
            ]
        else:
            if not auth.revoke_token(session=s, token_id=args.id):
                raise PladaError(f"no token with id {args.id}")
            out = {"id": args.id, "revoked": True}
    print(json.dumps(out, indent=2))
    return 0


def cmd_task(args: argparse.Namespace) -> int:
    """Owner administration from the server's own shell (which holds the database: an admin by definition)."""
    from plada.server import auth, repo
    from plada.server.db import init_db, make_engine

    factory = init_db(make_engine(_settings(args).database_url))
    admin = auth.Caller(None, "admin", owner=None, name="plada-server task (server shell)")
    with factory.begin() as s:
        if args.task_command == "chown":
            try:
                auth.check_owner(args.owner)
            except ValueError as exc:
                raise PladaError(f"owner {args.owner!r}: {exc}") from exc
            task = repo.set_owner(session=s, name=args.name, owner=args.owner, caller=admin)
            out: Any = {"task": task.name, "owner": task.owner}
        else:
            task = repo.get_task(session=s, name=args.name)
            out = {
                "task": task.name,
                "owner": task.owner,
                "access": task.access,
                "history": [
                    {"at": e.at, "actor": e.actor, "action": e.action, "detail": e.detail}
                    for e in repo.task_history(session=s, task=task)
                ],
            }
    print(json.dumps(out, indent=2))
    return 0


def cmd_job(args: argparse.Namespace) -> int:
    """The queue from the server's shell: list it, cancel a job (the shell holds the database: an admin)."""
    from plada.server import jobs, repo
    from plada.server.api.views import job_info
    from plada.server.db import init_db, make_engine

    factory = init_db(make_engine(_settings(args).database_url))
    with factory.begin() as s:
        if args.job_command == "cancel":
            row = jobs.cancel_job(s, repo.get_job(session=s, job_id=args.id), by="plada-server job cancel")
            out: Any = job_info(s, row).model_dump(mode="json")
        else:
            rows = repo.list_jobs(session=s, limit=args.limit, active_only=not args.all)
            ctx = repo.job_contexts(session=s, jobs=rows)
            out = [
                {k: v for k, v in job_info(s, r, ctx[r.id]).model_dump(mode="json").items() if k != "error"}
                | {"worker": r.worker_id}
                for r in rows
            ]
    print(json.dumps(out, indent=2))
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    """Schema migrations (they also run at every start of the server, a worker or a CLI command)."""
    from plada.server import migrate
    from plada.server.db import make_engine

    settings = _settings(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url)
    if args.db_command == "upgrade":
        before, after = migrate.upgrade(engine)
        out = {"before": before, "after": after, "head": migrate.head()}
    else:
        out = {"current": migrate.current(engine), "head": migrate.head()}
    print(json.dumps(out, indent=2))
    return 0


def cmd_pool_add(args: argparse.Namespace) -> int:
    from plada.server import repo
    from plada.server.db import init_db, make_engine
    from plada.shared.pool import open_pool

    factory = init_db(make_engine(_settings(args).database_url))
    pool = open_pool(Path(args.dir))
    with factory.begin() as s:
        repo.register_pool(session=s, pool=pool)
    print(json.dumps({"pool": pool.name, "pool_id": pool.pool_id, "n_items": len(pool)}))
    return 0


def cmd_pool_list(args: argparse.Namespace) -> int:
    from plada.server import repo
    from plada.server.db import init_db, make_engine

    factory = init_db(make_engine(_settings(args).database_url))
    with factory() as s:
        rows = [
            {"name": r.name, "pool_id": r.pool_id, "n_items": r.n_items, "path": r.path}
            for r in repo.list_pools(session=s)
        ]
    print(json.dumps(rows, indent=2))
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="overrides PLADA_DATA_DIR")
    p.add_argument("--database-url", help="overrides PLADA_DATABASE_URL")
    p.add_argument("--pools-dir", help="overrides PLADA_POOLS_DIR")


_SUB_EXAMPLES = {
    "serve": "PLADA_POOLS_DIR=~/.cache/plada/world/pools plada-server serve --port 8000",
    "worker": "plada-server worker --device cuda",
    "pool build": "plada-server pool build mini-v1 --out ~/.cache/plada/world",
    "pool index-folder": "plada-server pool index-folder /data/imagenet/train --out pools/in1k --name in1k",
    "pool index-tars": "plada-server pool index-tars /data/imagenet-wds/train --out pools/in1k-wds --name in1k-wds",
    "pool cluster": "plada-server pool cluster pools/in1k --k 256",
    "pool embed": "plada-server pool embed ~/.cache/plada/world/pools/mini-v1",
    "pool add": "plada-server pool add pools/in1k",
    "pool list": "plada-server pool list",
    "token create": "plada-server token create --scope publish --name alice --owner vision-team",
    "token list": "plada-server token list",
    "token revoke": "plada-server token revoke 3",
    "task chown": "plada-server task chown fashion vision-team",
    "job list": "plada-server job list --all --limit 20",
    "db upgrade": "plada-server db upgrade --database-url postgresql+psycopg://plada@db/plada",
    "db current": "plada-server db current",
    "job cancel": "plada-server job cancel 12",
    "task history": "plada-server task history fashion",
    "key show": "plada-server key show --data-dir plada-data   # then: plada-client pull --trust ed25519:...",
}


def _add_examples(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """Every sub-command's --help ends with an example, the way users learn a CLI."""
    for action in parser._actions:  # argparse has no public accessor for sub-parsers
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                key = f"{prefix}{name}"
                if key in _SUB_EXAMPLES:
                    sub.epilog = f"example:\n  {_SUB_EXAMPLES[key]}"
                    sub.formatter_class = argparse.RawDescriptionHelpFormatter
                _add_examples(sub, f"{key} ")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plada-server",
        description="plada server: API, worker, pools.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the HTTP API (uvicorn)")
    _common(p)
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="API processes sharing the port (uvicorn workers; snapshots and rate limits are per process)",
    )
    p.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--port-file", help="write the bound port here once listening (useful with --port 0)")
    p.set_defaults(fn=cmd_serve)
    p = sub.add_parser("worker", help="run a worker that processes publish jobs")
    _common(p)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N (overrides PLADA_DEVICE)")
    p.add_argument("--once", action="store_true", help="process one job, then exit")
    p.add_argument("--max-idle", type=float, default=None, help="exit after this many idle seconds")
    p.set_defaults(fn=cmd_worker)
    pool = sub.add_parser("pool", help="build, index, register and list reference pools")
    psub = pool.add_subparsers(dest="pool_command", required=True)
    p = psub.add_parser(
        "build", help="build a built-in world (pool mini-v1, or photo-v1 from its folder of zips) + tasks into OUT"
    )
    p.add_argument("name", help="mini-v1, or photo-v1 (with --from)")
    p.add_argument("--out", required=True, help="world folder: OUT/pools/<name> and OUT/tasks/*")
    p.add_argument("--from", dest="source", help="photo-v1: the photo-world folder (pool_photo40k.zip, target_*.zip)")
    p.set_defaults(fn=cmd_pool_build)
    p = psub.add_parser(
        "index-folder",
        help="make a pool from an ImageNet-style image tree (parallel hashing; an interrupted run resumes)",
    )
    p.add_argument("source")
    p.add_argument("--out", required=True)
    p.add_argument("--name", required=True)
    p.add_argument(
        "--image-size", type=int, default=None, help="working side in pixels (default: the images' native size)"
    )
    p.add_argument("--channels", type=int, choices=[1, 3], default=3)
    p.add_argument("--workers", type=int, default=None, help="hashing threads (default: one per core)")
    p.set_defaults(fn=cmd_pool_index)
    p = psub.add_parser("index-tars", help="make a pool from WebDataset tar shards (items read in place)")
    p.add_argument("source", help="folder of uncompressed *.tar shards")
    p.add_argument("--out", required=True)
    p.add_argument("--name", required=True)
    p.add_argument(
        "--image-size", type=int, default=None, help="working side in pixels (default: the images' native size)"
    )
    p.add_argument("--channels", type=int, choices=[1, 3], default=3)
    p.set_defaults(fn=cmd_pool_index)
    p = psub.add_parser("cluster", help="compute a coding order (k-means clusters) once and store it in the manifest")
    p.add_argument("dir")
    p.add_argument("--k", type=int, default=64, help="number of clusters")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_pool_cluster)
    p = psub.add_parser(
        "embed",
        help="cache features for every pool item once (an ImageNet-pretrained backbone for RGB pools when its "
        "weights are installed, else a small CNN trained on the manifest groups), so tasks get a probe teacher, "
        "feature selectors and proxy students without a pool forward pass",
    )
    p.add_argument("dir", help="pool folder")
    p.add_argument("--name", default="default", help="index name (several backbones can coexist)")
    p.add_argument(
        "--arch",
        default="auto",
        help="auto (efficientnet_lite0 pretrained for RGB pools with its weights installed, else smallcnn), "
        "smallcnn (trained on the pool's groups), or a timm model with local weights (PLADA_WEIGHTS_DIR)",
    )
    p.add_argument(
        "--image-size", type=int, default=None, help="pretrained backbones: input side (default: pool side in 128-224)"
    )
    p.add_argument("--epochs", type=int, default=3, help="smallcnn: backbone training epochs")
    p.add_argument("--train-items", type=int, default=20_000, help="smallcnn: items sampled to train the backbone")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--force", action="store_true", help="rebuild even if a matching index exists")
    p.set_defaults(fn=cmd_pool_embed)
    p = psub.add_parser("add", help="register a pool folder in the database")
    _common(p)
    p.add_argument("dir")
    p.set_defaults(fn=cmd_pool_add)
    p = psub.add_parser("list", help="list registered pools")
    _common(p)
    p.set_defaults(fn=cmd_pool_list)
    tok = sub.add_parser("token", help="bearer tokens for publishers and readers (stored hashed)")
    tsub = tok.add_subparsers(dest="token_command", required=True)
    p = tsub.add_parser("create", help="create a token and print it once")
    _common(p)
    p.add_argument(
        "--scope",
        choices=["read", "publish", "admin"],
        required=True,
        help="read: gated tasks and reports; publish: also publish (own tasks); admin: any task, owners",
    )
    p.add_argument("--name", default="token", help="who it is for (shown in 'token list')")
    p.add_argument(
        "--owner",
        default=None,
        help="the team whose tasks this token may publish to (default: --name); tokens of one owner share tasks",
    )
    p.set_defaults(fn=cmd_token)
    p = tsub.add_parser("list", help="list tokens (never the secrets)")
    _common(p)
    p.set_defaults(fn=cmd_token)
    p = tsub.add_parser("revoke", help="revoke a token by id")
    _common(p)
    p.add_argument("id", type=int)
    p.set_defaults(fn=cmd_token)
    tk = sub.add_parser("task", help="task owners and history (who published and changed what)")
    tksub = tk.add_subparsers(dest="task_command", required=True)
    p = tksub.add_parser("chown", help="give a task to another owner (also for tasks older than ownership)")
    _common(p)
    p.add_argument("name")
    p.add_argument("owner")
    p.set_defaults(fn=cmd_task)
    p = tksub.add_parser("history", help="a task's owner, access and history")
    _common(p)
    p.add_argument("name")
    p.set_defaults(fn=cmd_task)
    dbp = sub.add_parser("db", help="database schema migrations (Alembic; also run at every start)")
    dbsub = dbp.add_subparsers(dest="db_command", required=True)
    p = dbsub.add_parser("upgrade", help="migrate the database to the current schema")
    _common(p)
    p.set_defaults(fn=cmd_db)
    p = dbsub.add_parser("current", help="print the database's schema revision and the newest one")
    _common(p)
    p.set_defaults(fn=cmd_db)
    jb = sub.add_parser("job", help="the job queue: list it, cancel a job")
    jbsub = jb.add_subparsers(dest="job_command", required=True)
    p = jbsub.add_parser("list", help="queued and running jobs, newest first (--all: finished ones too)")
    _common(p)
    p.add_argument("--all", action="store_true", help="include succeeded, failed and cancelled jobs")
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(fn=cmd_job)
    p = jbsub.add_parser(
        "cancel", help="cancel a queued or running job (a running one stops at its next progress point)"
    )
    _common(p)
    p.add_argument("id", type=int)
    p.set_defaults(fn=cmd_job)
    key = sub.add_parser("key", help="the ed25519 key that signs every version")
    ksub = key.add_subparsers(dest="key_command", required=True)
    p = ksub.add_parser("show", help="print the public key clients pin (creates the key on first use)")
    _common(p)
    p.set_defaults(fn=cmd_key_show)
    _add_examples(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from plada.server.logs import configure

    fmt = "json" if os.environ.get("PLADA_LOG_FORMAT", "").strip().lower() == "json" else "text"
    configure(fmt)
    try:
        return int(args.fn(args))
    except PladaError as exc:
        print(f"plada-server: error: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except ValidationError as exc:
        first = exc.errors()[0]
        print(
            f"plada-server: error: invalid setting {'.'.join(map(str, first['loc']))}: {first['msg']}", file=sys.stderr
        )
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
