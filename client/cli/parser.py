"""The ``plada-client`` argument parser: every subcommand, its flags and one example."""

from __future__ import annotations

import argparse
import os

from plada.client.cli import commands
from plada.client.coverage import DEFAULT_MIN_COVERAGE
from plada.shared.cli import add_json_flag

EXAMPLES = """examples:
  plada-client verify-pool ~/.cache/plada/world/pools/mini-v1
  plada-client pool attach --server http://127.0.0.1:8000 --pool mini-v1 ~/my-copy-of-the-pool
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


def _per_class(v: str) -> int:
    n = int(v)
    if not 1 <= n <= 200:
        raise argparse.ArgumentTypeError("must be 1-200")
    return n


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
    p.add_argument(
        "--min-coverage",
        type=_fraction,
        default=DEFAULT_MIN_COVERAGE,
        help=f"an attached pool copy: refuse to train when it holds less than this share of the payload's items "
        f"(missing, or another picture under the key; default {DEFAULT_MIN_COVERAGE:g}, see docs/cli.md)",
    )


def _fraction(v: str) -> float:
    try:
        x = float(v)
    except ValueError:
        x = -1.0
    if not 0.0 <= x <= 1.0:
        raise argparse.ArgumentTypeError("must be a number in 0-1")
    return x


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plada-client",
        description="plada client: pull payloads, verify them against your pool, train students.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help: str, example: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help,
            description=help[0].upper() + help[1:] + ".",
            epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    p = add(
        "verify-pool",
        "re-hash every item of a local pool and print its pool_id",
        "plada-client verify-pool ~/.cache/plada/world/pools/mini-v1",
    )
    p.add_argument("pool", help="pool folder")
    p.set_defaults(fn=commands.cmd_verify_pool)
    p = add(
        "tasks",
        "list the server's tasks (--task NAME: one task with its class names, e.g. to name zip folders)",
        "plada-client tasks --server http://127.0.0.1:8000 --task fashion",
    )
    _server_args(p)
    p.add_argument("--task", help="show this task alone, with its classes")
    p.set_defaults(fn=commands.cmd_tasks)
    p = add(
        "versions",
        "list a task's versions with bytes, selection and predicted/reported accuracy",
        "plada-client versions --server http://127.0.0.1:8000 --task fashion",
    )
    _server_args(p)
    p.add_argument("--task", required=True)
    p.set_defaults(fn=commands.cmd_versions)
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
    p.set_defaults(fn=commands.cmd_inspect)
    p = add(
        "pull",
        "download, verify and cache a task's payload (offline or without --server: write the cached one)",
        "plada-client pull --server http://127.0.0.1:8000 --task fashion --pool POOL --out fashion.plada",
    )
    _server_args(p, required=False)
    p.add_argument("--task", required=True)
    p.add_argument("--version", default="latest")
    p.add_argument("--pool", required=True, help="local pool folder (must match the payload's pool_id)")
    p.add_argument("--out", help="payload file to write (default TASK-vN.plada)")
    p.add_argument("--cache", help="cache folder (default $PLADA_CACHE or ~/.cache/plada)")
    p.set_defaults(fn=commands.cmd_pull)
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
    p.set_defaults(fn=commands.cmd_train)
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
    p.set_defaults(fn=commands.cmd_agent)
    p = add(
        "publish",
        "publish a task: a spec (JSON or file) and a .npz/.zip data file",
        "plada-client publish --server URL --spec spec.json --data train.npz --wait",
    )
    _server_args(p)
    p.add_argument("--spec", required=True, help="task spec: inline JSON (any length), @FILE or a JSON file path")
    p.add_argument("--data", required=True)
    p.add_argument("--wait", action="store_true", help="wait for the job and print the version")
    p.set_defaults(fn=commands.cmd_publish)
    p = add(
        "import",
        "verify a payload that arrived by other means (USB, e-mail) and add it to the cache",
        "plada-client import fashion-v3.plada --pool POOL",
    )
    p.add_argument("file")
    p.add_argument(
        "--pool",
        help="the payload's pool: checks it (pool_id, coding layout) and is needed to decode payloads coded in the "
        "pool's group order (most are)",
    )
    p.add_argument("--cache", help="cache folder (default $PLADA_CACHE or ~/.cache/plada)")
    _trust_arg(p)
    p.set_defaults(fn=commands.cmd_import)
    p = add(
        "pool",
        "attach your own copy of a pool (folder, tar or Parquet shards) to the server's pool definition",
        "plada-client pool attach --server http://127.0.0.1:8000 --pool photo-v1 ~/data/tiny-imagenet/train",
    )
    psub = p.add_subparsers(dest="pool_command", required=True)
    c = psub.add_parser(
        "attach",
        help="map a local copy onto the pool's definition by key and write an attachment (a pool folder to pass "
        "as --pool): no decoding, prints a coverage report",
        description="Map SOURCE (an image folder, a folder of WebDataset .tar shards, or of Parquet shards with "
        "image bytes and a key/path column) onto the pool definition by key. Key rules, first match wins: the "
        "exact relative path; the path with another extension; the path flattened (a/b.jpg = a_b.jpg); the file "
        "name when unique in the definition. --key rewrites local names first. Each item a payload uses is "
        "checked when training reads it (exact hash, else perceptual fingerprint).",
        epilog="examples:\n"
        "  plada-client pool attach --server http://127.0.0.1:8000 --pool photo-v1 ~/tiny-imagenet/train\n"
        "  plada-client pool attach --definition photo-v1.pooldef --pool photo-v1 --kind parquet ~/hub/photo/data\n"
        "  plada-client pool attach --server URL --pool photo-v1 --key '^([^_]+)_(.+)$=\\1/\\2' ~/flat-copy",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("source", help="your copy: image folder, or a folder of *.tar or *.parquet shards")
    c.add_argument("--pool", required=True, help="the pool's name on the server (e.g. photo-v1)")
    c.add_argument("--server", help="base URL to fetch the definition from (cached; offline: the cached one)")
    c.add_argument("--definition", help="a definition file instead of --server (from 'plada-client pool definition')")
    c.add_argument("--token", default=None)
    _trust_arg(c)
    c.add_argument("--timeout", type=float, default=30.0)
    c.add_argument("--deadline", type=float, default=600.0, help="seconds the definition download may take (600)")
    c.add_argument("--kind", choices=["folder", "tar", "parquet"], help="what SOURCE is (default: detected)")
    c.add_argument(
        "--key",
        help="REGEX=TEMPLATE: re.sub(REGEX, TEMPLATE, local name) is the key looked up, e.g. "
        "'^([^_]+)_(.+)$=\\1/\\2' for flat <group>_<name> files",
    )
    c.add_argument("--out", help="attachment folder (default <cache>/pools/<pool>)")
    c.add_argument("--cache", help="cache folder (default $PLADA_CACHE or ~/.cache/plada)")
    c.add_argument(
        "--hash",
        action="store_true",
        help="also hash every matched file now (optional; resumable): how many are identical",
    )
    c.set_defaults(fn=commands.cmd_pool_attach)
    c = psub.add_parser(
        "definition",
        help="download a pool's definition (and its signature, FILE.sig) for an offline attach",
        description="Download a pool's definition (and its signature, FILE.sig) for an offline attach.",
        epilog="example:\n"
        "  plada-client pool definition --server http://127.0.0.1:8000 --pool photo-v1 --out photo-v1.pooldef",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _server_args(c)
    c.add_argument("--pool", required=True)
    c.add_argument("--out", required=True, help="file to write")
    c.add_argument("--cache", help="cache folder (default $PLADA_CACHE or ~/.cache/plada)")
    c.set_defaults(fn=commands.cmd_pool_definition)
    p = add("cache", "list or prune the local payload cache", "plada-client cache prune --dry-run")
    csub = p.add_subparsers(dest="cache_command", required=True)
    for name, hlp in (("ls", "list cached payloads"), ("prune", "remove unreferenced or damaged payloads")):
        c = csub.add_parser(name, help=hlp, description=hlp[0].upper() + hlp[1:] + ".")
        c.add_argument("--cache", help="cache folder (default $PLADA_CACHE or ~/.cache/plada)")
        if name == "prune":
            c.add_argument("--all", action="store_true", help="empty the whole cache")
            c.add_argument("--dry-run", action="store_true", help="only list what would be removed")
        c.set_defaults(fn=commands.cmd_cache)
    add_json_flag(parser)
    return parser
