"""Celery task-protocol-2 messages built by hand, so non-Celery producers (the relays) can feed workers.

The task name is the event type and the task id is the event id, so a producer never needs to know a
consumer's function names, and a worker can deduplicate on the task id. The envelope's ``traceparent``
rides as an AMQP header, which Celery exposes to the task as ``self.request.traceparent``.

Reference: https://docs.celeryq.dev/en/stable/internals/protocol.html#version-2
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any

from parley_common.events import Event

_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_EMBED_JSON = json.dumps(_EMBED, separators=(",", ":")).encode()
_HOST = socket.gethostname()


@dataclass(frozen=True)
class TaskMessage:
    """What goes on the wire: body bytes, AMQP headers and properties."""

    body: bytes
    headers: dict[str, Any]
    content_type: str
    content_encoding: str
    message_id: str
    correlation_id: str
    routing_key: str


def _headers(task: str, task_id: str, traceparent: str | None, origin: str) -> dict[str, Any]:
    # Only what Celery reads or shows: it ``.get``s every other protocol-2 header with a None default,
    # and each header is encoded by the publisher and decoded by every consumer, message after message.
    headers: dict[str, Any] = {
        "lang": "py",
        "task": task,
        "id": task_id,
        "root_id": task_id,
        "origin": f"{origin}@{_HOST}",
    }
    if traceparent:
        headers["traceparent"] = traceparent
    return headers


def build_task_message(
    task: str, task_id: str, kwargs: dict[str, Any], *, traceparent: str | None = None, origin: str = "parley"
) -> TaskMessage:
    """A protocol-2 message that runs ``task(**kwargs)`` with id ``task_id``."""
    body = json.dumps([[], kwargs, _EMBED], separators=(",", ":")).encode()
    return TaskMessage(
        body=body,
        headers=_headers(task, task_id, traceparent, origin),
        content_type="application/json",
        content_encoding="utf-8",
        message_id=task_id,
        correlation_id=task_id,
        routing_key=task,
    )


def event_message(event: Event) -> TaskMessage:
    """The message that delivers ``event`` to the task named after its type, as ``event=<json>``."""
    return build_task_message(
        event.type,
        str(event.id),
        {"event": event.model_dump(mode="json")},
        traceparent=event.traceparent,
        origin=event.source,
    )


def payload_message(event_type: str, event_id: str, payload: dict[str, Any]) -> TaskMessage:
    """Like :func:`event_message` for an event already serialised (an outbox row)."""
    traceparent = payload.get("traceparent")
    return build_task_message(
        event_type,
        event_id,
        {"event": payload},
        traceparent=traceparent if isinstance(traceparent, str) else None,
        origin=str(payload.get("source", "parley")),
    )


# A body built here (and by Celery's own JSON publisher with compact separators) is exactly
# BODY_PREFIX + <event JSON> + BODY_SUFFIX, which lets a consumer validate the event without parsing the
# envelope around it (see :func:`event_json`).
BODY_PREFIX = b'[[],{"event":'
BODY_SUFFIX = b"}," + _EMBED_JSON + b"]"


def event_json(body: bytes) -> bytes | None:
    """The event's JSON inside a protocol-2 body of the usual shape, or None for any other shape.

    Safe to trust only together with a JSON parser: if the slice parses as one JSON value, the body was
    exactly ``[[], {"event": <that value>}, <embed>]``.
    """
    if body.startswith(BODY_PREFIX) and body.endswith(BODY_SUFFIX):
        return body[len(BODY_PREFIX) : -len(BODY_SUFFIX)]
    return None


def raw_payload_message(
    event_type: str, event_id: str, payload_json: str, *, traceparent: str | None, source: str | None
) -> TaskMessage:
    """Like :func:`payload_message` for an event still in its JSON text form (an outbox row read as text).

    The relay reads ``payload::text`` so a row goes from the database to the wire without being parsed
    and serialised again; the body is the same protocol-2 body, byte for byte valid JSON.
    """
    body = BODY_PREFIX + payload_json.encode() + BODY_SUFFIX
    return TaskMessage(
        body=body,
        headers=_headers(event_type, event_id, traceparent, source or "parley"),
        content_type="application/json",
        content_encoding="utf-8",
        message_id=event_id,
        correlation_id=event_id,
        routing_key=event_type,
    )
