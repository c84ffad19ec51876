"""The ``plada-server`` argument parser: every subcommand, its flags and one example."""

from __future__ import annotations

import argparse

from plada.server.cli import commands
from plada.shared.cli import add_json_flag

EXAMPLES = """examples:
  plada-server pool build mini-v1 --out ~/.cache/plada/world
  PLADA_POOLS_DIR=~/.cache/plada/world/pools plada-server serve --port 8000
  plada-server worker
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="overrides PLADA_DATA_DIR")
    p.add_argument("--database-url", help="overrides PLADA_DATABASE_URL")
    p.add_argument("--pools-dir", help="overrides PLADA_POOLS_DIR")


SUB_EXAMPLES = {
    "serve": "PLADA_POOLS_DIR=~/.cache/plada/world/pools plada-server serve --port 8000",
    "worker": "plada-server worker --device cuda",
    "pool build": "plada-server pool build mini-v1 --out ~/.cache/plada/world",
    "pool index-folder": "plada-server pool index-folder /data/imagenet/train --out pools/in1k --name in1k",
    "pool index-tars": "plada-server pool index-tars /data/imagenet-wds/train --out pools/in1k-wds --name in1k-wds",
    "pool cluster": "plada-server pool cluster pools/in1k --k 256",
    "pool fingerprint": "plada-server pool fingerprint pools/in1k",
    "pool embed": "plada-server pool embed ~/.cache/plada/world/pools/mini-v1",
    "pool compress": "plada-server pool compress pools/in21k --dim 256 --replace",
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
                if key in SUB_EXAMPLES:
                    sub.epilog = f"example:\n  {SUB_EXAMPLES[key]}"
                    sub.formatter_class = argparse.RawDescriptionHelpFormatter
                _add_examples(sub, f"{key} ")


def _no_fingerprints(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-fingerprints",
        action="store_true",
        help="skip the fingerprint pass (decodes every image; run 'pool fingerprint DIR' later): without it, only "
        "byte-identical client copies can be checked",
    )


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
    p.set_defaults(fn=commands.cmd_serve)
    p = sub.add_parser("worker", help="run a worker that processes publish jobs")
    _common(p)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N (overrides PLADA_DEVICE)")
    p.add_argument("--once", action="store_true", help="process one job, then exit")
    p.add_argument("--max-idle", type=float, default=None, help="exit after this many idle seconds")
    p.set_defaults(fn=commands.cmd_worker)
    pool = sub.add_parser("pool", help="build, index, register and list reference pools")
    psub = pool.add_subparsers(dest="pool_command", required=True)
    p = psub.add_parser(
        "build", help="build a built-in world (pool mini-v1, or photo-v1 from its folder of zips) + tasks into OUT"
    )
    p.add_argument("name", help="mini-v1, or photo-v1 (with --from)")
    p.add_argument("--out", required=True, help="world folder: OUT/pools/<name> and OUT/tasks/*")
    p.add_argument("--from", dest="source", help="photo-v1: the photo-world folder (pool_photo40k.zip, target_*.zip)")
    p.set_defaults(fn=commands.cmd_pool_build)
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
    _no_fingerprints(p)
    p.set_defaults(fn=commands.cmd_pool_index)
    p = psub.add_parser("index-tars", help="make a pool from WebDataset tar shards (items read in place)")
    p.add_argument("source", help="folder of uncompressed *.tar shards")
    p.add_argument("--out", required=True)
    p.add_argument("--name", required=True)
    p.add_argument(
        "--image-size", type=int, default=None, help="working side in pixels (default: the images' native size)"
    )
    p.add_argument("--channels", type=int, choices=[1, 3], default=3)
    _no_fingerprints(p)
    p.set_defaults(fn=commands.cmd_pool_index)
    p = psub.add_parser(
        "fingerprint",
        help="compute every item's perceptual fingerprint (part of the pool's definition: clients with re-encoded "
        "or resized copies attach with it); builds and indexes do it by themselves",
    )
    p.add_argument("dir", help="pool folder")
    p.add_argument("--force", action="store_true", help="recompute even when fingerprints.npy is current")
    p.set_defaults(fn=commands.cmd_pool_fingerprint)
    p = psub.add_parser("cluster", help="compute a coding order (k-means clusters) once and store it in the manifest")
    p.add_argument("dir")
    p.add_argument("--k", type=int, default=64, help="number of clusters")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=commands.cmd_pool_cluster)
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
    p.set_defaults(fn=commands.cmd_pool_embed)
    p = psub.add_parser(
        "compress",
        help="a compressed copy of a pretrained feature index: projected to --dim columns, stored as int8 "
        "(ImageNet-21K: 3.6 GB at 256 instead of 36 GB), for the passes that compare items (kNN, leakage audit, "
        "strata); while the full index stays on disk the linear passes (teacher, domain classifier, proxies) "
        "stream it, which keeps the accuracy; read and written a block at a time",
    )
    p.add_argument("dir", help="pool folder")
    p.add_argument("--index", default="default", help="the index to compress")
    p.add_argument("--dim", type=int, default=256, help="columns kept (the accuracy cost: docs/benchmarks.md)")
    p.add_argument("--name", default=None, help="the new index's name (default: <index>-pca<dim>)")
    p.add_argument(
        "--replace",
        action="store_true",
        help="make the compressed index the pool's default (what publishing uses); the old one is kept as "
        "--keep-as (delete it to save its disk at the accuracy cost in docs/benchmarks.md)",
    )
    p.add_argument("--keep-as", default="full", help="with --replace: the name the uncompressed index keeps")
    p.add_argument("--sample", type=int, default=100_000, help="rows the projection is fitted on")
    p.set_defaults(fn=commands.cmd_pool_compress)
    p = psub.add_parser("add", help="register a pool folder in the database")
    _common(p)
    p.add_argument("dir")
    p.set_defaults(fn=commands.cmd_pool_add)
    p = psub.add_parser("list", help="list registered pools")
    _common(p)
    p.set_defaults(fn=commands.cmd_pool_list)
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
    p.set_defaults(fn=commands.cmd_token)
    p = tsub.add_parser("list", help="list tokens (never the secrets)")
    _common(p)
    p.set_defaults(fn=commands.cmd_token)
    p = tsub.add_parser("revoke", help="revoke a token by id")
    _common(p)
    p.add_argument("id", type=int)
    p.set_defaults(fn=commands.cmd_token)
    tk = sub.add_parser("task", help="task owners and history (who published and changed what)")
    tksub = tk.add_subparsers(dest="task_command", required=True)
    p = tksub.add_parser("chown", help="give a task to another owner (also for tasks older than ownership)")
    _common(p)
    p.add_argument("name")
    p.add_argument("owner")
    p.set_defaults(fn=commands.cmd_task)
    p = tksub.add_parser("history", help="a task's owner, access and history")
    _common(p)
    p.add_argument("name")
    p.set_defaults(fn=commands.cmd_task)
    dbp = sub.add_parser("db", help="database schema migrations (Alembic; also run at every start)")
    dbsub = dbp.add_subparsers(dest="db_command", required=True)
    p = dbsub.add_parser("upgrade", help="migrate the database to the current schema")
    _common(p)
    p.set_defaults(fn=commands.cmd_db)
    p = dbsub.add_parser("current", help="print the database's schema revision and the newest one")
    _common(p)
    p.set_defaults(fn=commands.cmd_db)
    jb = sub.add_parser("job", help="the job queue: list it, cancel a job")
    jbsub = jb.add_subparsers(dest="job_command", required=True)
    p = jbsub.add_parser("list", help="queued and running jobs, newest first (--all: finished ones too)")
    _common(p)
    p.add_argument("--all", action="store_true", help="include succeeded, failed and cancelled jobs")
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(fn=commands.cmd_job)
    p = jbsub.add_parser(
        "cancel", help="cancel a queued or running job (a running one stops at its next progress point)"
    )
    _common(p)
    p.add_argument("id", type=int)
    p.set_defaults(fn=commands.cmd_job)
    key = sub.add_parser("key", help="the ed25519 key that signs every version")
    ksub = key.add_subparsers(dest="key_command", required=True)
    p = ksub.add_parser("show", help="print the public key clients pin (creates the key on first use)")
    _common(p)
    p.set_defaults(fn=commands.cmd_key_show)
    _add_examples(parser)
    add_json_flag(parser)
    return parser
