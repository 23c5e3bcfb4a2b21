"""``parley-chat-worker``: a ``user.deleted.v1`` erases the user's conversations, messages, documents,
chunks, call records and cached answers, and nothing of anyone else's; a redelivery is harmless."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import redis
from parley_common.events import UserDeletedV1
from parley_common.messaging import topology
from parley_common.messaging.celery_protocol import event_message
from parley_common.testing import rabbitmq
from parley_common.testing.processes import ManagedProcess, venv_command

from tests.chat.support import ChatStack, User
from tests.support.api import eventually
from tests.support.db import query

TABLES = ("conversations", "messages", "documents", "document_chunks", "completions")


@pytest.fixture(scope="module")
def worker(stack: ChatStack) -> ManagedProcess:
    process = stack.manager.spawn(
        "chat-worker",
        [venv_command("parley-chat-worker")],
        {**stack.config.base_env(), **stack.chat_env, "PARLEY_WORKER_CONCURRENCY": "1"},
    )
    process.wait_for_log(r"ready\.$")
    return process


def _rows(stack: ChatStack, user: User) -> dict[str, int]:
    return {
        table: query(
            stack.config.database_url,
            f"SELECT count(*) AS n FROM chat.{table} WHERE user_id = :u",
            u=str(user.user_id),
        )[0]["n"]
        for table in TABLES
    }


def _cache_keys(stack: ChatStack, user: User) -> list[bytes]:
    client = redis.Redis.from_url(stack.config.redis_url)
    try:
        prefix = stack.config.redis_prefix
        return [
            key
            for pattern in (
                f"{prefix}chat:cache:v1:{user.user_id}:*",
                f"{prefix}chat:semantic:v1:{user.user_id}:*",
            )
            for key in client.scan_iter(match=pattern)
        ]
    finally:
        client.close()


def _use_everything(user: User) -> None:
    """A conversation with a turn, a document, a cached answer and a semantic-cache entry."""
    with user.http() as http:
        assert (
            http.post(
                "/v1/documents", json={"title": "Notes", "content": "Tram 28 goes to the castle."}
            ).status_code
            == 201
        )
        conversation = http.post("/v1/conversations", json={}).json()["id"]
        turn = http.post(
            f"/v1/conversations/{conversation}/messages",
            json={"content": "Which tram goes to the castle?", "documents": "all", "temperature": 0},
        )
        assert turn.status_code == 201, turn.text


def _deleted(user: User) -> Any:
    return event_message(
        UserDeletedV1(
            source="gateway",
            subject=str(user.user_id),
            user_id=user.user_id,
            email=f"{uuid.uuid4().hex}@example.com",
        )
    )


def test_a_deleted_user_is_erased_and_others_are_not(
    stack: ChatStack, providers: dict[str, str], worker: ManagedProcess
) -> None:
    gone, kept = stack.user(cache="semantic"), stack.user(cache="semantic")
    for user in (gone, kept):
        _use_everything(user)
    before = _rows(stack, gone)
    assert all(before.values()), before  # every kind of row exists, so erasing it is shown
    assert _cache_keys(stack, gone)
    kept_before = (_rows(stack, kept), len(_cache_keys(stack, kept)))

    message = _deleted(gone)
    rabbitmq.publish(stack.config.amqp_url, [message, message], queues=[topology.CHAT])  # delivered twice

    eventually(lambda: not any(_rows(stack, gone).values()), what="the user's rows erased")
    eventually(lambda: not _cache_keys(stack, gone), what="the user's cached answers purged")
    assert (_rows(stack, kept), len(_cache_keys(stack, kept))) == kept_before
    eventually(
        lambda: any(r.get("event") == "erasure.done" for r in worker.json_lines()), what="the erasure logged"
    )
    with gone.http() as http:  # what chat shows the (still valid) internal token: nothing left
        assert http.get("/v1/conversations").json()["data"] == []
        assert http.get("/v1/documents").json()["data"] == []
    eventually(lambda: _depth(stack, topology.CHAT.name) == 0, what="both deliveries acknowledged")
    assert _depth(stack, topology.CHAT.dead_letter_queue) == 0  # a redelivery is no error


def _depth(stack: ChatStack, queue: str) -> int:
    return asyncio.run(rabbitmq.queue_depth(stack.config.amqp_url, queue))
