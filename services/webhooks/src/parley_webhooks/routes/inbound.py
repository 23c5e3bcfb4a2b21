"""``POST /v1/webhooks/inbound/billing``: the billing provider's webhook (no Parley credentials: the
gateway forwards it untouched, and the signature is the authentication)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from parley_common.api import SessionDep
from parley_common.errors import Problem
from parley_common.logs import get_logger

from parley_webhooks import billing
from parley_webhooks.config import Settings

router = APIRouter(prefix="/v1/webhooks/inbound", tags=["inbound webhooks"])
log = get_logger(__name__)


async def _read_capped(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Problem(413, "payload_too_large", f"Bodies above {limit} bytes are refused.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise Problem(413, "payload_too_large", f"Bodies above {limit} bytes are refused.")
    return bytes(body)


@router.post("/billing")
async def billing_webhook(request: Request, session: SessionDep) -> dict[str, Any]:
    settings: Settings = request.app.state.settings
    raw = await _read_capped(request, settings.billing_max_body_bytes)
    try:
        billing.verify_signature(
            request.headers.get("stripe-signature"),
            raw,
            settings.billing_webhook_secret.get_secret_value(),
            settings.billing_signature_tolerance,
        )
    except billing.SignatureError as exc:
        log.warning("billing.signature_refused", reason=exc.code)
        raise Problem(400, exc.code, exc.detail) from None
    try:
        payload = json.loads(raw)
    except ValueError:
        raise Problem(400, "invalid_payload", "The body is not JSON.") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("id"), str) or not payload["id"]:
        raise Problem(400, "invalid_payload", "The event has no id.")
    outcome = await billing.apply_event(session, payload, settings)
    log.info(
        "billing.event_received", provider_event_id=payload["id"], type=payload.get("type"), outcome=outcome
    )
    return {"received": True, "outcome": outcome}
