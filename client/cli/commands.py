"""The ``plada-client`` commands: each parses nothing and prints one result (``OUT``); the work is the
library's (``PladaClient``, ``plada.client.load``, ``train_student``, the agent)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from plada.client.load import layout_for, open_payload_file, read_bytes, sidecar, write_payload_file
from plada.shared.cli import Output, counting_bar, progress_bar
from plada.shared.errors import PladaError

OUT = Output()  # main() sets OUT.json from --json


def _open_pool(path: str) -> Any:
    from plada.shared.pool import open_pool

    return open_pool(Path(path))


def cmd_verify_pool(args: argparse.Namespace) -> int:
    from plada.shared.errors import PoolError
    from plada.shared.pool import verify_pool

    pool = _open_pool(args.pool)
    if getattr(pool, "attached", False):
        raise PoolError(
            f"{args.pool} is an attached copy of {pool.name}: its items are checked as they are used; for a full "
            f"pass, rerun 'plada-client pool attach ... --hash' (counts the byte-identical items)"
        )
    report = verify_pool(pool, progress=counting_bar("verifying"))
    if not report.ok:
        raise PoolError(
            f"{report.n_mismatched:,} of {report.n_items:,} items differ from the manifest "
            f"(first: {', '.join(report.first_mismatches[:3])})"
        )
    OUT.emit({"pool": pool.name, "pool_id": report.pool_id, "n_items": report.n_items, "verified": True})
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from plada.shared.payload import inspect_payload

    pool = _open_pool(args.pool) if args.pool else None
    data = read_bytes(args.file)
    info = inspect_payload(data, layout=layout_for(data, pool, getattr(args, "cache", None)))
    if not args.full:
        info.pop("label_counts", None)
    info["signature"] = _signature_report(args, data)
    if args.preview or args.html:
        info["preview"] = _preview(args, data, pool)
    OUT.emit(info)
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
    payload = decode_payload(data, layout=layout_for(data, pool, getattr(args, "cache", None)))
    check_pool(payload, pool)
    if getattr(pool, "attached", False):  # an own copy: draw only what it holds as the server labelled it
        from plada.client.coverage import usable_items

        payload, _ = usable_items(payload, pool, 0.0)
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


def _signature_report(args: argparse.Namespace, data: bytes) -> dict[str, Any]:
    """Signer and verification result of FILE's detached signature (FILE.sig), against the pinned key."""
    from plada.shared.errors import SignatureError
    from plada.shared.payload import payload_sha256

    sig_path, sig = sidecar(args.file)
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


def _client(args: argparse.Namespace, **kw: Any) -> Any:
    from plada.client.api import PladaClient

    return PladaClient(
        args.server or "",
        token=args.token,
        timeout=args.timeout,
        deadline=args.deadline,
        blob_base_url=getattr(args, "blob_url", None),
        **kw,
    )


def cmd_pull(args: argparse.Namespace) -> int:
    from plada.client.cache import offline_mode

    pool = _open_pool(args.pool)
    online = bool(args.server) and not offline_mode()  # as train: offline, or no --server, reads the cache
    with _client(args, cache_dir=args.cache, trust=_trusted(args), offline=not online) as client:
        payload = client.fetch(args.task, args.version, pool=pool)
        data = client.cache.get(payload.sha256 or "")
        if data is None:
            raise PladaError("the payload vanished from the cache while it was being written out; pull again")
        signature = client.cache.signature(payload.sha256 or "")
        trusted = client.trust is not None
    out = Path(args.out) if args.out else Path(f"{args.task}-v{payload.version}.plada")
    write_payload_file(out, data, signature)
    OUT.emit(
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
        min_coverage=args.min_coverage,
    )


def cmd_train(args: argparse.Namespace) -> int:
    from plada.client.cache import offline_mode
    from plada.client.train import load_eval_split, train_student

    pool = _open_pool(args.pool)
    trust = _trusted(args)
    if args.payload:
        payload = open_payload_file(args.payload, pool=pool, cache_dir=args.cache, trust=trust).payload
    else:  # online, or from the cache (offline, or no server given): the client's own fetch, signature included
        online = bool(args.server) and not offline_mode()
        with _client(args, cache_dir=args.cache, trust=trust, offline=not online) as client:
            payload = client.fetch(args.task, args.version, pool=pool)
        if not online:
            why = "offline (PLADA_OFFLINE=1)" if offline_mode() else "no --server given"
            print(
                f"plada-client: {why}: training from cached payload {payload.task} v{payload.version} "
                f"({(payload.sha256 or '')[:12]}…)",
                file=sys.stderr,
            )
    evals = _input_file(args.eval, "--eval") if args.eval else None
    split = load_eval_split(evals, list(payload.classes), pool.image_shape) if evals else None
    try:
        metrics = train_student(
            payload, pool, Path(args.out), _train_config(args), eval_split=split, progress=progress_bar("training")
        )
    except KeyboardInterrupt:
        print(f"plada-client: {_interrupted(Path(args.out))}", file=sys.stderr)
        return 130
    OUT.emit(metrics)
    return 0


def _interrupted(out: Path) -> str:
    """What Ctrl-C during training leaves: the last finished epoch's checkpoint, and how to go on."""
    from plada.client.train import CHECKPOINT

    ckpt = out / CHECKPOINT
    if not ckpt.is_file():
        return f"interrupted before the first epoch ended; nothing saved in {out}"
    try:
        import torch

        epoch = int(torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"]) + 1
    except Exception:  # a checkpoint we cannot read is still the one a rerun resumes from, or replaces
        return f"interrupted; checkpoint in {ckpt}; rerun the same command to resume"
    return f"interrupted after epoch {epoch}; checkpoint saved in {ckpt}; rerun the same command to resume"


def cmd_tasks(args: argparse.Namespace) -> int:
    if args.task:
        with _client(args) as client:
            t = client.task(args.task)
        OUT.emit(
            {
                "task": t.name,
                "pool": t.pool_name,
                "latest": t.latest_version,
                "updated": t.updated_at.isoformat(timespec="seconds"),
                "classes": t.classes if OUT.json else " | ".join(t.classes),
            }
        )
        return 0
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
    OUT.emit(rows)
    return 0


def cmd_versions(args: argparse.Namespace) -> int:

    with _client(args) as client:
        rows = []
        for v in client.versions(args.task):
            m = _obj(v.metrics)  # a server's metrics are free-form: any level may be missing or odd
            rows.append(
                {
                    "version": v.version,
                    "status": v.status,
                    "bytes": v.size_bytes,
                    "items": v.n_items,
                    "selection": _obj(m.get("selection")).get("label"),
                    "predicted_acc": _obj(m.get("validation")).get("predicted_client_accuracy"),
                    "reported_acc": _obj(m.get("reports")).get("mean_accuracy"),
                    "sha256": v.sha256,
                }
            )
    OUT.emit(rows)
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from plada.client.cache import PayloadCache

    cache = PayloadCache(Path(args.cache) if args.cache else None)
    if args.cache_command == "ls":
        rows = cache.entries()
        if not OUT.json:
            rows = [{k: r.get(k) for k in ("task", "version", "bytes", "ok", "sha256", "refs")} for r in rows]
        OUT.emit(rows)
        return 0
    removed = cache.prune(everything=args.all, dry_run=args.dry_run)
    OUT.emit(
        {"cache": str(cache.root), "removed": len(removed), "dry_run": args.dry_run, "files": [str(p) for p in removed]}
    )
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from plada.client.cache import PayloadCache

    pool = _open_pool(args.pool) if args.pool else None
    # full verification; a pinned key: the detached signature must verify, or nothing is imported
    loaded = open_payload_file(args.file, pool=pool, cache_dir=args.cache, trust=_trusted(args))
    payload, data, signature = loaded.payload, loaded.data, loaded.signature
    cache = PayloadCache(Path(args.cache) if args.cache else None)
    sha = cache.import_bytes(data, task=payload.task, version=payload.version)
    if signature:
        cache.put_signature(sha, signature)
    OUT.emit(
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
    OUT.emit({"trained": done})
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


def _input_file(path: str, flag: str) -> Path:
    """A file the user named: a clear ``file_not_found`` (with the folder it was looked for in) instead of a
    traceback, before any network call."""
    from plada.shared.errors import InputFileError

    p = Path(path).expanduser()
    if not p.is_file():
        where = "is a folder, not a file" if p.is_dir() else f"does not exist (looked in {p.resolve().parent})"
        raise InputFileError(f"{flag} {path}: {where}")
    return p


def cmd_publish(args: argparse.Namespace) -> int:
    spec = read_spec(args.spec)
    data = _input_file(args.data, "--data")
    with _client(args) as client:
        resp = client.publish(spec, data)
        if args.wait:
            bar = progress_bar(f"publishing {resp.task} v{resp.version}")
            client.wait_job(resp.job.id, on_progress=lambda j: bar(j.progress, j.message))
            info = client.version(resp.task, resp.version).model_dump(mode="json")
            OUT.emit(info if OUT.json else version_summary(info))
        else:
            OUT.emit(resp.model_dump(mode="json"))
    return 0


def _obj(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


def version_summary(info: dict[str, Any]) -> dict[str, Any]:
    """What a person reads after a publish: the full metrics document is ``--json``'s."""
    m = _obj(info.get("metrics"))
    val, sel, teacher = _obj(m.get("validation")), _obj(m.get("selection")), _obj(m.get("teacher"))

    def pct(v: Any) -> str | None:
        return f"{100 * v:.1f} %" if isinstance(v, int | float) else None

    return {
        "task": info.get("task"),
        "version": info.get("version"),
        "status": info.get("status"),
        "items": info.get("n_items"),
        "bytes": info.get("size_bytes"),
        "recipe": val.get("chosen") or sel.get("label"),
        "teacher_acc (server val)": pct(teacher.get("val_accuracy")),
        "predicted_client_acc (server val)": pct(val.get("predicted_client_accuracy")),
        "warnings": "; ".join(str(w) for w in _list(m.get("warnings"))) or "none",
        "sha256": info.get("sha256"),
        "details": "--json prints the whole metrics document",
    }


def _trusted(args: argparse.Namespace) -> Any:
    from plada.shared.signing import PublicKey

    text = getattr(args, "trust", None) or os.environ.get("PLADA_TRUST")
    return PublicKey.parse(text) if text else None


def cmd_pool_attach(args: argparse.Namespace) -> int:
    from plada.client.cache import default_cache_dir
    from plada.client.definitions import check_pool_name, read_definition_file
    from plada.shared.errors import DefinitionError
    from plada.shared.pool import AttachedPool, KeyRule, attach, open_pool
    from plada.shared.pool.attach import hash_pass

    name = check_pool_name(args.pool)
    if bool(args.server) == bool(args.definition):
        raise DefinitionError("give --server URL (fetched and cached) or --definition FILE (offline), not both")
    if args.definition:
        loaded = read_definition_file(args.definition, trust=_trusted(args))
    else:
        with _client(args, cache_dir=args.cache, trust=_trusted(args)) as client:
            loaded = client.pool_definition(name)
    d = loaded.definition
    if d.name != name:
        raise DefinitionError(f"the definition is of pool {d.name!r}, not {name!r}")
    out = Path(args.out) if args.out else (Path(args.cache) if args.cache else default_cache_dir()) / "pools" / name
    report = attach(
        d,
        Path(args.source),
        out,
        kind=args.kind,
        key_rule=KeyRule(args.key) if args.key else None,
        definition_sha256=loaded.sha256,
    )
    for line in report.refused[:20]:
        print(f"plada-client: {line}", file=sys.stderr)
    if len(report.refused) > 20:
        print(f"plada-client: … and {len(report.refused) - 20:,} more refused entries", file=sys.stderr)
    result = report.as_dict() | {"definition": loaded.source, "definition_sha256": loaded.sha256}
    result["refused"] = len(report.refused)
    if d.fingerprints is None:
        result["note"] = "the definition has no fingerprints: only byte-identical items can be used"
    if args.hash:
        attached = open_pool(out)
        assert isinstance(attached, AttachedPool)  # attach() just wrote it
        result["hash_pass"] = hash_pass(attached, progress=counting_bar("hashing"))
    if not OUT.json:
        result["groups_missing"] = (
            ", ".join(f"{g['group']} {g['missing']}/{g['of']}" for g in report.groups_missing) or "none"
        )
        result["rules"] = ", ".join(f"{k} {v:,}" for k, v in report.rules.items()) or "none"
    OUT.emit(result)
    return 0


def cmd_pool_definition(args: argparse.Namespace) -> int:
    with _client(args, cache_dir=args.cache, trust=_trusted(args)) as client:
        loaded = client.pool_definition(args.pool)
    write_payload_file(Path(args.out), loaded.data, loaded.signature)  # FILE and FILE.sig, atomically
    d = loaded.definition
    OUT.emit(
        {
            "pool": d.name,
            "pool_id": d.pool_id,
            "n_items": len(d),
            "bytes": len(loaded.data),
            "sha256": loaded.sha256,
            "file": args.out,
            "signed": bool(loaded.signature),
        }
    )
    return 0
