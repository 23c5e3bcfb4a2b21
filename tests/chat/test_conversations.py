"""``/v1/conversations``: CRUD with cursor pagination, turns that carry the history (trimmed to the
model's context), streamed turns, events, owner scoping, and history reads on a read replica."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from parley_common.db.admin import drop_database
from parley_common.testing import resources
from parley_common.testing.processes import ProcessManager
from parley_common.testing.services import TestServices as Services
from parley_common.tokens import estimate_prompt_tokens
from sqlalchemy.engine import make_url

from tests.chat.support import TINY_CONTEXT, ChatStack, User, calls, configure, sse_data
from tests.support.api import eventually
from tests.support.db import query

PROBLEM_JSON = "application/problem+json"


def _create(http: httpx.Client, **body: Any) -> dict[str, Any]:
    response = http.post("/v1/conversations", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def _post(http: httpx.Client, conversation_id: str, content: str, **body: Any) -> httpx.Response:
    return http.post(f"/v1/conversations/{conversation_id}/messages", json={"content": content, **body})


def _messages(http: httpx.Client, conversation_id: str, **params: Any) -> dict[str, Any]:
    response = http.get(f"/v1/conversations/{conversation_id}/messages", params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


def _all_pages(http: httpx.Client, path: str, **params: Any) -> list[list[str]]:
    pages, cursor = [], None
    while True:
        response = http.get(path, params={**params, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append([item["id"] for item in body["data"]])
        assert body["has_more"] is (body["next_cursor"] is not None)
        cursor = body["next_cursor"]
        if cursor is None:
            return pages


class TestConversationCrud:
    def test_create_get_rename_delete(self, stack: ChatStack) -> None:
        with stack.user().http() as http:
            created = _create(http, system_prompt="Be brief.")
            assert created["object"] == "conversation"
            assert (created["title"], created["model"], created["message_count"]) == (
                "New conversation",
                None,
                0,
            )
            path = f"/v1/conversations/{created['id']}"
            assert http.get(path).json() == created

            renamed = http.patch(path, json={"title": "Trip to Lisbon"})
            assert renamed.status_code == 200
            assert renamed.json()["title"] == "Trip to Lisbon"
            assert http.get(path).json()["title"] == "Trip to Lisbon"

            assert http.delete(path).status_code == 204
            gone = http.get(path)
            assert gone.status_code == 404
            assert gone.headers["content-type"].startswith(PROBLEM_JSON)
            assert gone.json()["type"].endswith("/conversation_not_found")
            assert http.delete(path).status_code == 404

    def test_list_is_newest_first_with_cursor_pages(self, stack: ChatStack) -> None:
        with stack.user().http() as http:
            ids = [_create(http, title=f"c{i}")["id"] for i in range(5)]
            pages = _all_pages(http, "/v1/conversations", limit=2)
        assert pages == [ids[4:2:-1], ids[2:0:-1], ids[0:1]]

    def test_bad_input_is_a_clear_problem(self, stack: ChatStack) -> None:
        with stack.user(allowed_models=["gpt-4o-mini"]).http() as http:
            unknown = http.post("/v1/conversations", json={"title": "x", "colour": "blue"})
            assert unknown.status_code == 422
            assert unknown.headers["content-type"].startswith(PROBLEM_JSON)
            not_allowed = http.post("/v1/conversations", json={"model": "gpt-4o"})
            assert not_allowed.status_code == 400
            assert not_allowed.json()["type"].endswith("/model_not_available")
            assert http.get("/v1/conversations/not-a-uuid").status_code == 404
            cursor = http.get("/v1/conversations", params={"cursor": "garbage!"})
            assert cursor.status_code == 400
            assert cursor.json()["type"].endswith("/invalid_cursor")
            assert http.get("/v1/conversations").json()["data"] == []  # nothing was created


class TestTurns:
    def test_a_turn_stores_both_messages_and_emits_events(
        self, stack: ChatStack, providers: dict[str, str]
    ) -> None:
        user = stack.user(name="pro", daily_token_quota=5000)
        with user.http() as http:
            conversation = _create(http, system_prompt="Be brief.")
            response = _post(http, conversation["id"], "plan a weekend in Porto")
            assert response.status_code == 201, response.text
            turn = response.json()
            assert turn["user_message"]["content"] == "plan a weekend in Porto"
            assert turn["assistant_message"]["content"] == "plan a weekend in Porto plan a weekend"
            assert turn["assistant_message"]["status"] == "completed"
            assert turn["usage"]["completion_tokens"] == 8
            assert response.headers["x-parley-assistant-message-id"] == turn["assistant_message"]["id"]
            after = http.get(f"/v1/conversations/{conversation['id']}").json()
            assert after["message_count"] == 2
            assert after["title"] == "plan a weekend in Porto"  # titled after the first message
            listed = _messages(http, conversation["id"])["data"]
        assert [(m["role"], m["id"]) for m in listed] == [
            ("user", turn["user_message"]["id"]),
            ("assistant", turn["assistant_message"]["id"]),
        ]
        [completed] = user.events("conversation.message_completed.v1")
        assert completed["conversation_id"] == conversation["id"]
        assert completed["message_id"] == turn["assistant_message"]["id"]
        assert (completed["model"], completed["finish_reason"], completed["completion_tokens"]) == (
            "gpt-4o-mini",
            "stop",
            8,
        )
        [usage] = user.events()
        assert usage["conversation_id"] == conversation["id"]
        assert (usage["plan"], usage["daily_token_quota"]) == ("pro", 5000)

    def test_the_history_goes_to_the_model(self, stack: ChatStack, providers: dict[str, str]) -> None:
        configure(providers["primary"], record_messages=True)
        with stack.user().http() as http:
            conversation = _create(http, system_prompt="Be brief.")
            first = _post(http, conversation["id"], "hello there").json()
            _post(http, conversation["id"], "and now goodbye")
        sent = calls(providers["primary"])[-1]["messages"]
        assert sent == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello there"},
            {"role": "assistant", "content": first["assistant_message"]["content"]},
            {"role": "user", "content": "and now goodbye"},
        ]

    def test_a_streamed_turn(self, stack: ChatStack, providers: dict[str, str]) -> None:
        user = stack.user()
        with user.http() as http:
            conversation = _create(http)
            with http.stream(
                "POST",
                f"/v1/conversations/{conversation['id']}/messages",
                json={"content": "stream me a poem", "stream": True},
                headers={"x-parley-usage": "1"},
            ) as response:
                assert response.status_code == 200
                assistant_id = response.headers["x-parley-assistant-message-id"]
                data = sse_data(response.iter_lines())
            assert data[-1] == "[DONE]"
            assert json.loads(data[-2])["usage"]["completion_tokens"] == 8  # the gateway's usage chunk
            text = "".join(
                (c["choices"][0]["delta"].get("content") or "")
                for c in map(json.loads, data[:-2])
                if c["choices"]
            )
            stored = _messages(http, conversation["id"])["data"]
        assert [m["role"] for m in stored] == ["user", "assistant"]
        assert stored[1]["id"] == assistant_id
        assert stored[1]["content"] == text == "stream me a poem stream me a poem"
        assert [e["message_id"] for e in user.events("conversation.message_completed.v1")] == [assistant_id]

    def test_a_streamed_turn_ends_only_once_the_reply_is_stored(
        self, stack: ChatStack, providers: dict[str, str]
    ) -> None:
        """A client that reads [DONE] and then lists the conversation must find the reply there."""
        configure(providers["primary"], chunks=10, chunk_delay_ms=30)
        user = stack.user()
        database_url = (
            make_url(stack.config.database_url).set(drivername="postgresql").render_as_string(False)
        )
        with user.http() as http, psycopg.connect(database_url, autocommit=False) as locker:
            conversation = _create(http)
            with http.stream(
                "POST",
                f"/v1/conversations/{conversation['id']}/messages",
                json={"content": "hold the end", "stream": True},
            ) as response:
                assert response.status_code == 200  # the question is stored by now
                # Storing the reply locks the conversation's row; holding it here holds the reply back.
                locker.execute(
                    "SELECT id FROM chat.conversations WHERE id = %s FOR UPDATE", (conversation["id"],)
                )
                lines = response.iter_lines()
                for line in lines:
                    if '"finish_reason":"stop"' in line:  # the model is done; the reply is being stored
                        break
                held = time.monotonic()
                release = threading.Timer(1.0, locker.commit)
                release.start()
                # The gateway ends its response at [DONE] (the stream's LastChunk), so [DONE] itself,
                # not the end of chat's body, is what must wait for the reply to be stored.
                done_after = next(time.monotonic() - held for line in lines if line == "data: [DONE]")
                release.join()
            assert done_after >= 0.9, "[DONE] was sent before the reply was stored"
            stored = _messages(http, conversation["id"])["data"]  # at once, no waiting
        assert [m["role"] for m in stored] == ["user", "assistant"]
        assert [m["status"] for m in stored] == ["completed", "completed"]

    def test_messages_pages_both_ways(self, stack: ChatStack, providers: dict[str, str]) -> None:
        with stack.user().http() as http:
            conversation = _create(http)
            for word in ("one", "two", "three"):
                assert _post(http, conversation["id"], word, max_tokens=1).status_code == 201
            path = f"/v1/conversations/{conversation['id']}/messages"
            forward = _all_pages(http, path, limit=4)
            backward = _all_pages(http, path, limit=4, order="desc")
            contents = [m["content"] for m in _messages(http, conversation["id"])["data"]]
        assert [len(p) for p in forward] == [4, 2]
        flat = list(itertools.chain.from_iterable(forward))
        assert list(itertools.chain.from_iterable(backward)) == flat[::-1]
        assert contents == ["one", "one", "two", "two", "three", "three"]

    def test_history_is_trimmed_to_the_context_budget(
        self, stack: ChatStack, providers: dict[str, str]
    ) -> None:
        configure(providers["primary"], record_messages=True, chunks=30)
        sentence = "the quick brown fox jumps over the lazy dog near the quiet river bank"
        with stack.user().http() as http:
            conversation = _create(http, model="tiny-context", system_prompt="Answer in one line.")
            for i in range(6):
                assert _post(http, conversation["id"], f"{sentence} {i}").status_code == 201
            stored = _messages(http, conversation["id"], limit=100)["data"]
        sent = calls(providers["primary"])[-1]["messages"]
        assert len(stored) == 12
        assert len(sent) < 12  # older turns were left out ...
        assert sent[0] == {"role": "system", "content": "Answer in one line."}  # ... never the system prompt
        assert sent[-1] == {"role": "user", "content": f"{sentence} 5"}  # ... nor the new message
        kept = sent[1:-1]  # the newest of the ten messages before this turn
        assert kept
        assert kept == [{"role": m["role"], "content": m["content"]} for m in stored[10 - len(kept) : 10]]
        budget = (
            TINY_CONTEXT - TINY_CONTEXT // 4
        )  # no max_tokens: a quarter of the window is kept for the reply
        assert estimate_prompt_tokens(sent) <= budget

    def test_a_message_too_long_for_the_model_is_refused_and_not_stored(
        self, stack: ChatStack, providers: dict[str, str]
    ) -> None:
        with stack.user().http() as http:
            conversation = _create(http, model="tiny-context")
            response = _post(http, conversation["id"], "word " * 400)
            assert response.status_code == 400
            assert response.json()["type"].endswith("/context_length_exceeded")
            assert http.get(f"/v1/conversations/{conversation['id']}").json()["message_count"] == 0
        assert calls(providers["primary"]) == []

    def test_a_cut_stream_keeps_what_was_generated(self, stack: ChatStack, providers: dict[str, str]) -> None:
        configure(providers["primary"], chunks=40, chunk_delay_ms=20)
        user = stack.user()
        with user.http() as http:
            conversation = _create(http)
            with http.stream(
                "POST",
                f"/v1/conversations/{conversation['id']}/messages",
                json={"content": "tell me a long story", "stream": True},
            ) as response:
                received = 0
                for line in response.iter_lines():
                    if line.startswith("data: ") and '"content":"' in line and '"content":""' not in line:
                        received += 1
                    if received == 5:
                        break

            def stored() -> list[dict[str, Any]] | None:
                data = _messages(http, conversation["id"])["data"]
                return data if len(data) == 2 else None

            messages = eventually(stored, what="the partial reply")
        reply = messages[1]
        assert reply["status"] == "cancelled"
        assert 5 <= len(reply["content"].split()) < 40
        [usage] = user.events()
        assert (usage["status"], usage["estimated"], usage["conversation_id"]) == (
            "cancelled",
            True,
            conversation["id"],
        )
        assert usage["completion_tokens"] >= 5
        assert user.events("conversation.message_completed.v1") == []

    def test_a_failed_call_keeps_the_question_and_records_the_failure(
        self, stack: ChatStack, providers: dict[str, str]
    ) -> None:
        for url in providers.values():
            configure(url, errors=[500] * 4)
        user = stack.user()
        with user.http() as http:
            conversation = _create(http)
            response = _post(http, conversation["id"], "are you there")
            assert response.status_code == 502
            assert response.headers["content-type"].startswith(PROBLEM_JSON)
            assert [m["role"] for m in _messages(http, conversation["id"])["data"]] == ["user"]
        assert [e["status"] for e in user.events()] == ["failed"]


class TestOwnerScoping:
    def test_another_user_cannot_read_post_rename_or_delete(
        self, stack: ChatStack, providers: dict[str, str]
    ) -> None:
        alice, bob = stack.user(), stack.user()
        with alice.http() as http:
            conversation = _create(http, title="Alice's plans")
            _post(http, conversation["id"], "my secret plans")
            before = http.get(f"/v1/conversations/{conversation['id']}").json()
            calls_before = len(calls(providers["primary"]))
        path = f"/v1/conversations/{conversation['id']}"
        with bob.http() as http:
            attempts = [
                http.get(path),
                http.patch(path, json={"title": "mine now"}),
                http.get(path + "/messages"),
                _post(http, conversation["id"], "let me in"),
                _post(http, conversation["id"], "let me in", stream=True),
                http.delete(path),
            ]
            assert [r.status_code for r in attempts] == [404] * 6
            assert len({r.json()["detail"] for r in attempts}) == 1  # the same answer as for no conversation
            assert http.get("/v1/conversations").json()["data"] == []
        with alice.http() as http:
            after = http.get(path).json()
            assert after == before
            assert _messages(http, conversation["id"])["data"][0]["content"] == "my secret plans"
        assert len(calls(providers["primary"])) == calls_before
        assert bob.events() == []


# -- read replica ---------------------------------------------------------------------------------------


@pytest.fixture
def replica(parley_services: Services) -> Iterator[str]:
    """A second database playing a read replica (the chat schema, migrated), reached through a role that
    can only read: its URL."""
    tag = resources.new_tag()
    url = resources.create_database(parley_services.database_url, tag, [("parley_chat", "chat")])
    role = f"{tag}_reader"
    admin = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'reader'")
        conn.execute(f"ALTER ROLE {role} SET default_transaction_read_only = on")
        conn.execute(f"GRANT USAGE ON SCHEMA chat TO {role}")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA chat TO {role}")
    try:
        yield make_url(url).set(username=role, password="reader").render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
            conn.execute(f"DROP OWNED BY {role}")
        drop_database(url)
        with psycopg.connect(admin.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
            conn.execute(f"DROP ROLE IF EXISTS {role}")


def _copy_to_replica(primary_url: str, replica_url: str, user: User, marker: str) -> None:
    """Replicate one user's conversations and messages, each message's content prefixed with ``marker``
    (the replica is then provably where a read came from)."""
    admin = make_url(replica_url).set(username="postgres", password=None)
    conversations = query(
        primary_url, "SELECT * FROM chat.conversations WHERE user_id = :u", u=str(user.user_id)
    )
    messages = query(primary_url, "SELECT * FROM chat.messages WHERE user_id = :u", u=str(user.user_id))
    with psycopg.connect(admin.set(drivername="postgresql").render_as_string(hide_password=False)) as conn:
        for table, rows in (("conversations", conversations), ("messages", messages)):
            for row in rows:
                if table == "messages":
                    row = {**row, "content": marker + row["content"]}
                columns = ", ".join(row)
                placeholders = ", ".join(f"%({c})s" for c in row)
                conn.execute(f"INSERT INTO chat.{table} ({columns}) VALUES ({placeholders})", row)


class TestReadReplica:
    def test_history_reads_use_the_replica_and_writes_never_do(
        self,
        stack: ChatStack,
        providers: dict[str, str],
        replica: str,
        processes: ProcessManager,
        database_url: str,
    ) -> None:
        configure(providers["primary"], record_messages=True)
        chat = stack.spawn_chat("chat-with-replica", {"PARLEY_DATABASE_READ_URL": replica}, processes)
        user = stack.user()
        with user.http(chat) as http:
            conversation = _create(http)
            assert _post(http, conversation["id"], "first question").status_code == 201
            _copy_to_replica(database_url, replica, user, marker="[replica] ")

            # Reads: the listing and the next turn's history come from the replica ...
            listed = [m["content"] for m in _messages(http, conversation["id"])["data"]]
            assert all(content.startswith("[replica] ") for content in listed)
            assert _post(http, conversation["id"], "second question").status_code == 201
            sent = calls(providers["primary"])[-1]["messages"]
            assert [m["content"].startswith("[replica] ") for m in sent] == [True, True, False]

            # ... writes went to the primary only: the replica holds just what was copied into it.
            assert (
                len(
                    query(database_url, "SELECT 1 FROM chat.messages WHERE user_id = :u", u=str(user.user_id))
                )
                == 4
            )
            replica_admin = (
                make_url(replica)
                .set(username="postgres", password=None)
                .render_as_string(hide_password=False)
            )
            assert (
                len(
                    query(
                        replica_admin, "SELECT 1 FROM chat.messages WHERE user_id = :u", u=str(user.user_id)
                    )
                )
                == 2
            )
            assert query(replica_admin, "SELECT count(*) AS n FROM chat.completions")[0]["n"] == 0

            # The replica now lags behind the primary (it never got turn two): reads fall back.
            listed = [m["content"] for m in _messages(http, conversation["id"])["data"]]
            assert listed == ["first question", listed[1], "second question", listed[3]]
            assert not any(content.startswith("[replica]") for content in listed)
        processes.processes[-1].wait_for_log("history.replica_behind")
        readers = query(
            database_url.rsplit("/", 1)[0] + "/postgres",
            "SELECT usename, application_name FROM pg_stat_activity WHERE application_name = 'chat.api.read'",
        )
        assert readers
        assert {r["usename"] for r in readers} == {make_url(replica).username}


class TestPartitioning:
    def test_messages_are_hash_partitioned_by_user(
        self, stack: ChatStack, providers: dict[str, str], database_url: str
    ) -> None:
        partitions = query(
            database_url,
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'chat.messages'::regclass",
        )
        assert len(partitions) == 16
        assert all("FOR VALUES WITH (modulus 16" in p["bound"] for p in partitions)
        strategy = query(
            database_url,
            "SELECT partstrat FROM pg_partitioned_table WHERE partrelid = 'chat.messages'::regclass",
        )
        assert strategy == [{"partstrat": "h"}]

        user = stack.user()
        with user.http() as http:
            for _ in range(2):
                conversation = _create(http)
                _post(http, conversation["id"], "where do I live", max_tokens=1)
        homes = query(
            database_url,
            "SELECT DISTINCT tableoid::regclass::text AS part FROM chat.messages WHERE user_id = :u",
            u=str(user.user_id),
        )
        assert len(homes) == 1  # all of one user's messages live in one partition
        plan = query(
            database_url,
            "EXPLAIN SELECT * FROM chat.messages WHERE user_id = :u AND conversation_id = :c ORDER BY seq",
            u=str(user.user_id),
            c=conversation["id"],
        )
        home = homes[0]["part"].split(".")[-1]
        scans = [r["QUERY PLAN"] for r in plan if "messages_p" in r["QUERY PLAN"]]
        assert scans
        assert all(home in line for line in scans)  # pruned to that one partition
