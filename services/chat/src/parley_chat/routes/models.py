"""``GET /v1/models`` and ``GET /v1/models/{id}``: the models the caller's plan allows."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from parley_common.auth.dependencies import Caller
from parley_common.auth.internal import InternalIdentity
from parley_common.errors import Problem

from parley_chat.config import OFFLINE_MODEL
from parley_chat.providers import Router

router = APIRouter()

_STARTED = int(time.time())
OFFLINE_DESCRIPTION = (
    "Parley's built-in offline model: a local stand-in that echoes your words, used because no model "
    "provider is configured. Not a real language model."
)


def _model(router: Router, caller: InternalIdentity, model_id: str) -> dict[str, Any]:
    if model_id == OFFLINE_MODEL and router.offline:
        return {
            "id": OFFLINE_MODEL,
            "object": "model",
            "created": _STARTED,
            "owned_by": "parley-offline",
            "description": OFFLINE_DESCRIPTION,
            "offline": True,
        }
    used = caller.plan.model_routes.get(model_id, model_id)
    providers = [p.name for p in router.providers if p.serves(used)]
    entry: dict[str, Any] = {
        "id": model_id,
        "object": "model",
        "created": _STARTED,
        "owned_by": providers[0] if providers else "parley",
    }
    if used != model_id:
        entry["routed_to"] = used  # the plan answers this model with another (e.g. free → a cheaper one)
    return entry


@router.get("/v1/models")
async def list_models(caller: Caller, request: Request) -> dict[str, Any]:
    models: Router = request.app.state.router
    return {"object": "list", "data": [_model(models, caller, m) for m in models.visible_models(caller)]}


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, caller: Caller, request: Request) -> dict[str, Any]:
    models: Router = request.app.state.router
    if model_id not in models.visible_models(caller):
        raise Problem(404, "model_not_found", f"The model `{model_id}` does not exist.", param="model")
    return _model(models, caller, model_id)
