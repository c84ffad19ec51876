"""Reference pools the server serves tasks on, and their coding layouts."""

from __future__ import annotations

import io
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Header, Request, Response, status
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from plada.server import repo
from plada.server.api.deps import SessionDep
from plada.server.api.views import pool_info
from plada.server.pools import definition_file, open_registered
from plada.shared.errors import LayoutNotFoundError
from plada.shared.pool.definition import MEDIA_TYPE as DEFINITION_MEDIA_TYPE
from plada.shared.schemas import PoolsPublic

router = APIRouter(prefix="/v1/pools", tags=["pools"])


@router.get("", response_model=PoolsPublic, summary="Registered reference pools")
def list_pools(session: SessionDep) -> PoolsPublic:
    rows = repo.list_pools(session=session)
    return PoolsPublic(data=[pool_info(r) for r in rows], count=len(rows))


@router.get(
    "/{pool}/layout",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "int32 .npy, one id per item"}},
    summary="The pool's coding layout groups (payloads may be coded in this order)",
)
def get_pool_layout(pool: str, session: SessionDep) -> Response:
    """Clients fetch this once to decode payloads coded in the pool's cluster order (X-Plada-Layout-Id)."""
    row = repo.resolve_pool(session=session, ref=pool)
    p = open_registered(row.path)
    groups, layout = p.layout_groups, p.layout
    if groups is None or layout is None:
        raise LayoutNotFoundError(f"pool {row.name!r} has no groups or clusters in its manifest")
    buf = io.BytesIO()
    np.save(buf, groups.astype("<i4"), allow_pickle=False)
    headers = {"X-Plada-Layout-Id": layout.layout_id, "X-Plada-Pool-Id": row.pool_id, "ETag": f'"{layout.layout_id}"'}
    return Response(content=buf.getvalue(), media_type="application/octet-stream", headers=headers)


@router.get(
    "/{pool}/definition",
    response_class=Response,
    responses={
        200: {"content": {DEFINITION_MEDIA_TYPE: {}}, "description": "the pool definition (docs/payload-format.md)"},
        304: {"description": "the client's copy (If-None-Match) is current"},
    },
    summary="The pool's definition: ordered keys, groups, item hashes and fingerprints (signed)",
)
async def get_pool_definition(
    pool: str,
    request: Request,
    session: SessionDep,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """What a client attaches its own copy of the pool to (``plada-client pool attach``). Built once per pool
    state and kept on disk; its sha256 is the ETag and X-Plada-Signature signs it (definition domain)."""
    row = repo.resolve_pool(session=session, ref=pool)
    built = await run_in_threadpool(
        definition_file, row.path, request.app.state.settings, request.app.state.signing_key
    )
    headers = {
        "ETag": f'"{built.sha256}"',
        "X-Plada-Pool-Id": row.pool_id,
        "X-Plada-Signature": built.signature,
        "Cache-Control": "public, max-age=300",  # a pool's definition changes only when it is re-fingerprinted
    }
    if if_none_match and headers["ETag"] in {v.strip() for v in if_none_match.split(",")}:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    return FileResponse(built.path, media_type=DEFINITION_MEDIA_TYPE, headers=headers)
