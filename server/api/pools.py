"""Reference pools the server serves tasks on, and their coding layouts."""

from __future__ import annotations

import io

import numpy as np
from fastapi import APIRouter, Response

from plada.server import repo
from plada.server.api.deps import SessionDep
from plada.server.api.views import pool_info
from plada.server.pools import open_registered
from plada.shared.errors import LayoutNotFoundError
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
