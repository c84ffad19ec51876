"""Publishing a task: check everything, then write the upload and the rows together, or nothing at all."""

from __future__ import annotations

import json
import time
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from plada.server import repo
from plada.server.archs import unknown_arch
from plada.server.auth import LOCAL, Caller
from plada.server.db import JobRow, TaskRow, VersionRow
from plada.server.pipeline.selection import list_selectors
from plada.server.settings import Settings
from plada.server.uploads import ArchiveLimits, read_target_data, store_upload
from plada.shared.errors import InvalidSpecError
from plada.shared.payload import MAX_HEADER_BYTES, payload_floor
from plada.shared.schemas import TaskSpec

_WRITE_TRIES = 5


MAX_SPEC_CHARS = 1 << 20  # 65,535 classes of 200 characters would not fit either: the header limit says so
MAX_SPEC_DEPTH = 8  # TaskSpec is 3 levels deep; anything deeper can only be an attack or a mistake


def _depth(obj: object, level: int = 1) -> int:
    if level > MAX_SPEC_DEPTH:
        return level
    children = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else ()
    return max((_depth(c, level + 1) for c in children), default=level)


def parse_spec(raw: str) -> TaskSpec:
    """JSON text → TaskSpec, with every validation problem in one readable line."""
    if len(raw) > MAX_SPEC_CHARS:
        raise InvalidSpecError(f"spec is {len(raw)} characters; the limit is {MAX_SPEC_CHARS}")
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidSpecError(f"spec is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except RecursionError:
        raise InvalidSpecError("spec JSON is nested too deeply") from None
    except ValueError as exc:  # Python refuses integers of more than 4,300 digits: the spec's fault, not a 500
        raise InvalidSpecError(f"spec holds a number Python will not read: {exc}") from None
    if _depth(obj) > MAX_SPEC_DEPTH:
        raise InvalidSpecError(f"spec JSON is nested more than {MAX_SPEC_DEPTH} levels deep")
    try:
        spec = TaskSpec.model_validate(obj)
    except ValidationError as exc:
        parts = [f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}" for e in exc.errors()]
        raise InvalidSpecError(
            "invalid spec: " + "; ".join(parts), errors=[{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        ) from exc
    known = ["auto", *list_selectors()]
    if spec.selector.name not in known:  # the registry lives on the server, so the schema cannot check this
        msg = f"unknown selector {spec.selector.name!r}; known: {', '.join(known)}"
        raise InvalidSpecError(
            f"invalid spec: selector.name: {msg}", errors=[{"loc": ["selector", "name"], "msg": msg}]
        )
    return spec


def upload_shape(pool_shape: list[int], pool_dir: Path, spec: TaskSpec) -> tuple[int, int, int]:
    """The size a zip upload's images are decoded to: what the teacher reads, not what the pool stores.

    ``teacher.image_size`` when given; else the largest input of the pool's pretrained feature indexes (a
    probe teacher embeds the upload at that size) or the pool's own size, whichever is larger. npz uploads
    keep the size they come in: every consumer resizes to its own input."""
    h, w, c = (int(v) for v in pool_shape)
    if spec.teacher.image_size is not None:
        side = spec.teacher.image_size
        return side, side, c
    for info_path in sorted((pool_dir / "features").glob("*/index.json")):
        try:
            info = json.loads(info_path.read_text())
        except (OSError, ValueError):
            continue
        if info.get("kind") == "pretrained":
            ih, iw, _ = info["image_shape"]
            h, w = max(h, int(ih)), max(w, int(iw))
    return h, w, c


def publish(
    factory: sessionmaker[Session],
    settings: Settings,
    *,
    spec_json: str,
    data: bytes,
    filename: str,
    caller: Caller = LOCAL,
) -> tuple[TaskRow, VersionRow, JobRow]:
    """Validate spec, pool and data; then store the upload and commit task/version/job in one transaction."""
    spec = parse_spec(spec_json)
    why = unknown_arch(spec.teacher.arch, settings.data_dir / "cache")
    if why:
        raise InvalidSpecError(f"invalid spec: teacher.arch: {why}", errors=[{"loc": ["teacher", "arch"], "msg": why}])
    with factory() as s:
        pool = repo.resolve_pool(session=s, ref=spec.pool_id)
        h, w, c = upload_shape(pool.info["image_shape"], Path(pool.path), spec)
    try:  # an empty payload of this task: its header (class names after NFC) must fit the format's limit
        floor = payload_floor(
            tuple(spec.classes),
            task=spec.name,
            pool_id=pool.pool_id,
            n_pool=pool.n_items,
            pool_name=pool.name,
            codec=spec.codec,
            selector=spec.selector.name,
        )
    except ValueError as exc:
        size = len(json.dumps(spec.classes, ensure_ascii=False).encode())
        raise InvalidSpecError(
            f"the class names take {size:,} bytes as UTF-8 (after Unicode NFC normalisation); a payload header "
            f"holds at most {MAX_HEADER_BYTES:,}: {exc}"
        ) from exc
    if spec.max_bytes is not None and spec.max_bytes < floor:
        raise InvalidSpecError(
            f"max_bytes {spec.max_bytes} is smaller than an empty payload for this task "
            f"({floor} bytes: header with {len(spec.classes)} class names)"
        )
    with factory() as s:  # fail fast, before parsing a big upload; checked again in the write transaction
        repo.check_may_publish(session=s, spec=spec, caller=caller)
    limits = ArchiveLimits(max_inflated=settings.max_inflated_bytes, max_decoded=settings.max_decoded_bytes)
    x, y = read_target_data(data, filename, spec.classes, (int(h), int(w), int(c)), limits)
    path: Path = store_upload(settings.uploads_dir, x, y)
    try:
        for attempt in range(_WRITE_TRIES):
            try:
                with factory.begin() as s:
                    pool = repo.resolve_pool(session=s, ref=spec.pool_id)
                    task, version, job = repo.create_publication(
                        session=s,
                        spec=spec,
                        pool=pool,
                        data_path=path,
                        max_attempts=settings.job_max_attempts,
                        caller=caller,
                    )
                return task, version, job
            except IntegrityError:
                # a concurrent publish of the same task took the name or the version number first: the
                # next try sees its rows and takes the next number (or reports a class conflict)
                if attempt == _WRITE_TRIES - 1:
                    raise
        raise AssertionError("unreachable")
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def sweep_orphan_uploads(factory: sessionmaker[Session], uploads_dir: Path, grace_s: float) -> list[Path]:
    """Delete uploads (and temp files) no job refers to, once older than ``grace_s``.

    A server killed between writing an upload and committing its rows leaves such a file; the grace period
    keeps a file that another server process is about to commit."""
    if not uploads_dir.is_dir():
        return []
    with factory() as s:
        referenced = {Path(p).name for p in s.scalars(select(JobRow.data_path))}
    cutoff = time.time() - grace_s
    removed: list[Path] = []
    for f in uploads_dir.iterdir():
        if f.is_file() and f.name not in referenced and f.stat().st_mtime <= cutoff:
            f.unlink(missing_ok=True)
            removed.append(f)
    return removed


def sweep_finished_uploads(factory: sessionmaker[Session], retention_s: float) -> list[Path]:
    """Delete the uploads of jobs that ended (succeeded, failed for good, cancelled) more than ``retention_s``
    ago: nothing reads them again (a new version is a new upload), and a publisher's data should not outlive
    its use."""
    cutoff = time.time() - retention_s
    with factory() as s:
        paths = s.scalars(
            select(JobRow.data_path).where(
                JobRow.state.in_(("succeeded", "failed", "cancelled")), JobRow.updated_at <= cutoff
            )
        ).all()
    removed = []
    for p in map(Path, paths):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed
