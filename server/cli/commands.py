"""The ``plada-server`` commands: build Settings from the flags, call the library, emit one result."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from plada.shared.cli import Output, counting_bar, progress_bar
from plada.shared.errors import PladaError

OUT = Output()  # main() sets OUT.json from --json


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
    fingerprinted = _ensure_fingerprints(pool)
    OUT.emit(
        {
            "pool": pool.name,
            "pool_id": pool.pool_id,
            "n_items": len(pool),
            "fingerprints": fingerprinted,
            "pool_dir": str(out / "pools" / pool.name),
            "tasks_dir": str(out / "tasks"),
        }
    )
    return 0


def cmd_pool_index(args: argparse.Namespace) -> int:
    from plada.shared.pool import index_image_folder, index_tar_shards

    where = (Path(args.source), Path(args.out), args.name)
    shape = {"image_size": args.image_size, "channels": args.channels}
    if args.pool_command == "index-tars":
        pool = index_tar_shards(*where, **shape, progress=counting_bar("shards"))
    else:
        pool = index_image_folder(*where, **shape, workers=args.workers, progress=counting_bar("hashing"))
    fingerprinted = "skipped (--no-fingerprints)" if args.no_fingerprints else _ensure_fingerprints(pool)
    OUT.emit({"pool": pool.name, "pool_id": pool.pool_id, "n_items": len(pool), "fingerprints": fingerprinted})
    return 0


def _ensure_fingerprints(pool: Any, force: bool = False) -> str:
    """Every pool the server builds gets its items' fingerprints (its definition carries them, so clients
    with re-encoded or resized copies can attach); kept when already there for this pool."""
    from plada.shared.pool import fingerprint_pool
    from plada.shared.pool.definition import FINGERPRINTS_FILE

    path = pool.root / FINGERPRINTS_FILE
    if not force and path.is_file() and path.stat().st_mtime >= (pool.root / "manifest.npz").stat().st_mtime:
        return "kept"
    fingerprint_pool(pool, progress=counting_bar("fingerprinting"))
    return "computed"


def cmd_pool_fingerprint(args: argparse.Namespace) -> int:
    from plada.shared.pool import open_pool

    pool = open_pool(Path(args.dir))
    how = _ensure_fingerprints(pool, force=args.force)
    OUT.emit({"pool": pool.name, "pool_id": pool.pool_id, "n_items": len(pool), "fingerprints": how})
    return 0


def cmd_pool_cluster(args: argparse.Namespace) -> int:
    from plada.server.pipeline.clusters import pixel_clusters
    from plada.shared.pool import open_pool

    pool = open_pool(Path(args.dir))
    layout = pool.set_clusters(pixel_clusters(pool, k=args.k, seed=args.seed))
    OUT.emit({"pool": pool.name, "pool_id": pool.pool_id, "clusters": args.k, "layout_id": layout.layout_id})
    return 0


def cmd_key_show(args: argparse.Namespace) -> int:
    from plada.shared.signing import load_or_create_key

    settings = _settings(args)
    key = load_or_create_key(settings.signing_key)
    pub = key.public
    OUT.emit(
        {
            "algorithm": "ed25519",
            "public_key": pub.text,
            "key_id": pub.key_id,
            "key_file": str(settings.signing_key),
        }
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
        bar = progress_bar("embedding")
        arch = default_backbone(pool, config.weights_dir) if args.arch == "auto" else args.arch
        if arch is not None and arch != "smallcnn":
            index = build_pretrained_index(
                pool,
                args.name,
                arch=arch,
                image_size=args.image_size,
                config=config,
                progress=bar,
            )
        else:
            index = build_feature_index(
                pool,
                args.name,
                epochs=args.epochs,
                train_items=args.train_items,
                seed=args.seed,
                config=config,
                progress=bar,
            )
    OUT.emit({"pool": pool.name, "index": index.name, "reused": reused, **index.info})
    return 0


def cmd_pool_compress(args: argparse.Namespace) -> int:
    from plada.server.pipeline.compress import compress_index, replace_with
    from plada.shared.pool import open_pool

    pool = open_pool(Path(args.dir))
    if args.replace and args.index != "default":
        raise PladaError("--replace makes the compressed index the default: compress --index default")
    index = compress_index(
        pool, args.index, args.name, dim=args.dim, sample=args.sample, progress=progress_bar("compressing")
    )
    name = index.name
    if args.replace:
        replace_with(pool, name, keep_as=args.keep_as)
        name = "default"
    OUT.emit({"pool": pool.name, "index": name, **{k: v for k, v in index.info.items() if k != "name"}})
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
                raise PladaError(f"--owner {args.owner!r}: {exc}" if args.owner is not None else str(exc)) from exc
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
    OUT.emit(out)
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
    OUT.emit(out)
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
            out: Any = job_info(s, row, admin=True).model_dump(mode="json")  # the server's shell is an admin
        else:
            rows = repo.list_jobs(session=s, limit=args.limit, active_only=not args.all)
            ctx = repo.job_contexts(session=s, jobs=rows)
            out = [
                {k: v for k, v in job_info(s, r, ctx[r.id]).model_dump(mode="json").items() if k != "error"}
                | {"worker": r.worker_id}
                for r in rows
            ]
    OUT.emit(out)
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
    OUT.emit(out)
    return 0


def cmd_pool_add(args: argparse.Namespace) -> int:
    from plada.server import repo
    from plada.server.db import init_db, make_engine
    from plada.shared.pool import open_pool

    factory = init_db(make_engine(_settings(args).database_url))
    pool = open_pool(Path(args.dir))
    with factory.begin() as s:
        repo.register_pool(session=s, pool=pool)
    OUT.emit({"pool": pool.name, "pool_id": pool.pool_id, "n_items": len(pool)})
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
    OUT.emit(rows)
    return 0
