"""Admin routes, behind the bearer token (`admin_token`, off by default): POST /admin/reload (load a
version through the publish gate) and POST /admin/deny (hide listings on every replica)."""

from __future__ import annotations

import asyncio
import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Header

from index.store import denylist
from index.store.artifacts import GateRefused
from service.api.schemas import DenyBody, ErrorResponse, ReloadBody
from service.api.state import State
from service.serving.errors import AdminDisabled, InvalidRequest, ReloadFailed, Unauthorized

router = APIRouter()


async def require_admin(state: State, authorization: Annotated[str | None, Header()] = None) -> None:
    """The admin-auth dependency: 404 while no admin token is configured (the routes do not exist
    for a client), 401 without the bearer token; compared in constant time. It runs before the body
    is read, so an unauthenticated request learns nothing about the bodies these routes take."""
    token = state.settings.admin_token
    if token is None:
        raise AdminDisabled("not found")
    given = (authorization or "").removeprefix("Bearer ").strip()
    if not authorization or not authorization.startswith("Bearer ") or not hmac.compare_digest(
        given.encode(), token.get_secret_value().encode()
    ):
        raise Unauthorized("a valid bearer token is required")


Admin = Annotated[None, Depends(require_admin)]


@router.post("/admin/reload", include_in_schema=True, responses={401: {"model": ErrorResponse},
                                                                  409: {"model": ErrorResponse}})
async def admin_reload(state: State, _: Admin, body: ReloadBody | None = None) -> dict[str, str]:
    try:
        lv = await asyncio.to_thread(state.life.gated_reload, body.version if body else None,
                                     bool(body and body.force), "POST /admin/reload")
    except GateRefused as e:
        raise ReloadFailed(f"reload refused, still serving the previous version: {e} "
                           '(send "force": true to load it anyway; recorded in its manifest)') from None
    except Exception as e:  # noqa: BLE001 - the old version keeps serving
        raise ReloadFailed(f"reload failed, still serving the previous version: {e}") from None
    return {"status": "reloaded", "index_version": lv.version, "model_version": lv.model_version}


@router.post("/admin/deny", include_in_schema=True, responses={401: {"model": ErrorResponse}})
async def admin_deny(state: State, _: Admin, body: DenyBody) -> dict[str, str | int]:
    """Hide listings now (sold, removed): written to DIR/denylist.txt, so every replica follows."""
    path = denylist.denylist_path(state.settings.artifacts)
    try:
        ids = await asyncio.to_thread(denylist.update, path, () if body.remove else body.ids,
                                      body.ids if body.remove else ())
    except ValueError as e:
        raise InvalidRequest(f"ids: {e}") from None
    await asyncio.to_thread(state.engine.refresh_denylist)
    return {"status": "ok", "denied": len(ids), "generation": state.engine.deny_generation}
