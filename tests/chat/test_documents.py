"""``/v1/documents`` and retrieval in conversation turns (RAG): documents stored with embeddings in
PostgreSQL (pgvector), the closest excerpts handed to the model, owner scoping, plan limits, and bad
input refused with nothing stored."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import openai
import pytest

from tests.chat.support import ChatStack, User, calls, configure, sse_data
from tests.support.db import query
from tests.support.metrics import metric

PROBLEM_JSON = "application/problem+json"

LISBON = (
    "Tram 28 climbs from Martim Moniz through Graça and Alfama, passing close to São Jorge Castle. "
    "The castle sits on the highest hill of Lisbon; the tram stop at Miradouro de Santa Luzia is a short "
    "walk from its gate. Single tickets are cheaper on a Viva Viagem card than on board."
)
SOURDOUGH = (
    "A sourdough starter is flour and water fermented by wild yeast and lactic acid bacteria. Feed it "
    "twice a day at room temperature; it is ready when it doubles within six hours of a feeding. Bake "
    "the loaf in a covered Dutch oven at 250 degrees for twenty minutes, then uncovered until brown."
)
QUESTION = "Which tram takes me up to the castle in Lisbon?"


def _add(http: httpx.Client, title: str, content: str) -> dict[str, Any]:
    response = http.post("/v1/documents", json={"title": title, "content": content})
    assert response.status_code == 201, response.text
    return dict(response.json())


def _conversation(http: httpx.Client, **body: Any) -> str:
    response = http.post("/v1/conversations", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _turn(http: httpx.Client, conversation_id: str, content: str, **body: Any) -> httpx.Response:
    return http.post(f"/v1/conversations/{conversation_id}/messages", json={"content": content, **body})


def _system_prompt(provider_url: str) -> str:
    messages = calls(provider_url)[-1]["messages"]
    return "\n".join(m["content"] for m in messages if m["role"] == "system")


def _problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    body = dict(response.json())
    assert body["type"].endswith("/" + code), body
    return body


def _stored_documents(stack: ChatStack, user: User) -> list[dict[str, Any]]:
    return query(
        stack.config.database_url,
        "SELECT d.id, count(c.ordinal) AS chunks FROM chat.documents d "
        "LEFT JOIN chat.document_chunks c ON c.user_id = d.user_id AND c.document_id = d.id "
        "WHERE d.user_id = :u GROUP BY d.id",
        u=str(user.user_id),
    )


class TestDocuments:
    def test_add_list_get_delete(self, stack: ChatStack) -> None:
        user = stack.user()
        with user.http() as http:
            long_text = " ".join(f"word{i}" for i in range(300))
            added = _add(http, "Notes", long_text)
            assert (added["object"], added["title"], added["bytes"]) == ("document", "Notes", len(long_text))
            assert added["chunk_count"] == 3  # 120 words a chunk, 20 repeated: 0-119, 100-219, 200-299
            others = [_add(http, f"Doc {i}", f"text number {i}") for i in range(3)]
            path = f"/v1/documents/{added['id']}"
            assert http.get(path).json() == added

            first = http.get("/v1/documents", params={"limit": 3}).json()
            second = http.get("/v1/documents", params={"limit": 3, "cursor": first["next_cursor"]}).json()
            assert [d["id"] for d in first["data"] + second["data"]] == [
                d["id"] for d in [*reversed(others), added]
            ]
            assert (first["has_more"], second["has_more"]) == (True, False)

            assert http.delete(path).status_code == 204
            _problem(http.get(path), 404, "document_not_found")
            _problem(http.delete(path), 404, "document_not_found")
            _problem(http.get("/v1/documents/not-a-uuid"), 404, "document_not_found")
        assert {row["chunks"] for row in _stored_documents(stack, user)} == {1}  # the chunks went too

    def test_another_user_cannot_see_or_delete_a_document(self, stack: ChatStack) -> None:
        alice, bob = stack.user(), stack.user()
        with alice.http() as http:
            document = _add(http, "Lisbon", LISBON)
        with bob.http() as http:
            path = f"/v1/documents/{document['id']}"
            _problem(http.get(path), 404, "document_not_found")
            _problem(http.delete(path), 404, "document_not_found")
            assert http.get("/v1/documents").json()["data"] == []
        assert len(_stored_documents(stack, alice)) == 1

    def test_bad_input_is_a_clear_problem_and_stores_nothing(self, stack: ChatStack) -> None:
        user = stack.user(rag_max_document_bytes=1_000)
        with user.http() as http:
            _problem(http.post("/v1/documents", json={"content": "no title"}), 422, "validation_error")
            _problem(
                http.post("/v1/documents", json={"title": "t", "content": "x", "extra": 1}),
                422,
                "validation_error",
            )
            _problem(
                http.post("/v1/documents", json={"title": "t", "content": " \n\t "}), 400, "document_empty"
            )
            big = http.post("/v1/documents", json={"title": "t", "content": "é" * 501})  # 1,002 bytes
            assert "1002 bytes" in _problem(big, 413, "document_too_large")["detail"]
            _problem(http.get("/v1/documents", params={"cursor": "garbage"}), 400, "invalid_cursor")
        assert _stored_documents(stack, user) == []


class TestPlanLimits:
    def test_a_plan_without_retrieval_refuses_documents(
        self, stack: ChatStack, providers: dict[str, str]
    ) -> None:
        user = stack.user(rag_max_documents=0)
        with user.http() as http:
            _problem(
                http.post("/v1/documents", json={"title": "t", "content": LISBON}),
                403,
                "retrieval_not_in_plan",
            )
            conversation = _conversation(http)
            _problem(_turn(http, conversation, QUESTION, documents="all"), 403, "retrieval_not_in_plan")
            assert http.get(f"/v1/conversations/{conversation}").json()["message_count"] == 0
        assert calls(providers["primary"]) == []

    def test_the_document_count_holds_under_concurrent_uploads(self, stack: ChatStack) -> None:
        user = stack.user(rag_max_documents=2)

        async def upload_five() -> list[httpx.Response]:
            async with httpx.AsyncClient(
                base_url=stack.chat_url, headers={"authorization": f"Bearer {user.token}"}, timeout=60
            ) as http:
                return await asyncio.gather(
                    *(
                        http.post("/v1/documents", json={"title": f"d{i}", "content": LISBON})
                        for i in range(5)
                    )
                )

        responses = asyncio.run(upload_five())
        assert sorted(r.status_code for r in responses) == [201, 201, 403, 403, 403]
        for refused in (r for r in responses if r.status_code == 403):
            _problem(refused, 403, "document_limit_reached")
        assert len(_stored_documents(stack, user)) == 2


class TestRetrieval:
    def test_a_turn_is_answered_with_the_closest_excerpts(
        self, stack: ChatStack, providers: dict[str, str]
    ) -> None:
        configure(providers["primary"], record_messages=True)
        user = stack.user()
        with user.http() as http:
            lisbon = _add(http, "Lisbon trams", LISBON)
            _add(http, "Bread", SOURDOUGH)
            conversation = _conversation(http, system_prompt="Be brief.")
            response = _turn(http, conversation, QUESTION, documents="all")
            assert response.status_code == 201, response.text
            sources = response.json()["sources"]
            stored = http.get(f"/v1/conversations/{conversation}/messages").json()["data"]
        # Only the relevant document clears the similarity floor; the model sees it after the system prompt.
        assert [s["document_id"] for s in sources] == [lisbon["id"]]
        assert sources[0]["score"] > 0.4
        assert response.headers["x-parley-sources"] == f"{lisbon['id']}#0"
        system = _system_prompt(providers["primary"])
        assert system.startswith("Be brief.\n\nExcerpts from the user's documents")
        assert "[1] Lisbon trams (part 1)\nTram 28 climbs" in system
        assert "sourdough" not in system.lower()
        # The conversation keeps the question as asked, not the excerpts; the reply keeps its sources.
        assert stored[0]["content"] == QUESTION
        assert [m["sources"] for m in stored] == [[], sources]
        assert sources[0]["title"] == "Lisbon trams"

    def test_retrieval_can_be_limited_to_named_documents(
        self, stack: ChatStack, providers: dict[str, str]
    ) -> None:
        configure(providers["primary"], record_messages=True)
        with stack.user().http() as http:
            _add(http, "Lisbon trams", LISBON)
            bread = _add(http, "Bread", SOURDOUGH)
            conversation = _conversation(http)
            response = _turn(
                http, conversation, "How do I feed a sourdough starter?", documents=[bread["id"]]
            )
            assert response.status_code == 201, response.text
        assert [s["document_id"] for s in response.json()["sources"]] == [bread["id"]]
        system = _system_prompt(providers["primary"])
        assert "Feed it twice a day" in system
        assert "Tram 28" not in system

    def test_documents_never_cross_users(self, stack: ChatStack, providers: dict[str, str]) -> None:
        configure(providers["primary"], record_messages=True)
        alice, bob = stack.user(), stack.user()
        with bob.http() as http:
            bobs = _add(http, "Lisbon trams", LISBON)
        with alice.http() as http:
            conversation = _conversation(http)
            named = _turn(http, conversation, QUESTION, documents=[bobs["id"]])
            _problem(named, 404, "document_not_found")
            assert http.get(f"/v1/conversations/{conversation}").json()["message_count"] == 0
            assert calls(providers["primary"]) == []  # refused before any model call

            everything = _turn(http, conversation, QUESTION, documents="all")
            assert everything.status_code == 201, everything.text
        assert everything.json()["sources"] == []
        assert "x-parley-sources" not in everything.headers
        assert "Tram 28" not in json.dumps(calls(providers["primary"])[-1]["messages"])

    def test_metrics_count_documents_and_retrievals(
        self, stack: ChatStack, providers: dict[str, str]
    ) -> None:
        url = stack.chat_url + "/metrics"
        names = (
            "parley_chat_documents_stored_total",
            "parley_chat_document_chunks_stored_total",
            "parley_chat_document_embed_seconds_count",
            "parley_chat_retrieval_seconds_count",
        )
        before = [metric(url, name) for name in names]
        found_before, none_before = (
            metric(url, "parley_chat_retrievals_total", result=r) for r in ("excerpts", "none")
        )
        with stack.user().http() as http:
            _add(http, "Lisbon trams", LISBON)
            conversation = _conversation(http)
            assert _turn(http, conversation, QUESTION, documents="all").status_code == 201
            assert (
                _turn(
                    http, conversation, "What is the boiling point of mercury?", documents="all"
                ).status_code
                == 201
            )
        after = [metric(url, name) for name in names]
        assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1, 2]
        assert metric(url, "parley_chat_retrievals_total", result="excerpts") - found_before == 1
        assert metric(url, "parley_chat_retrievals_total", result="none") - none_before == 1

    def test_a_deleted_document_is_no_longer_retrieved(
        self, stack: ChatStack, providers: dict[str, str]
    ) -> None:
        configure(providers["primary"], record_messages=True)
        with stack.user().http() as http:
            lisbon = _add(http, "Lisbon trams", LISBON)
            conversation = _conversation(http)
            assert _turn(http, conversation, QUESTION, documents="all").json()["sources"]
            assert http.delete(f"/v1/documents/{lisbon['id']}").status_code == 204
            again = _turn(http, conversation, QUESTION, documents="all")
            assert again.status_code == 201, again.text
        assert again.json()["sources"] == []
        assert "Tram 28" not in _system_prompt(providers["primary"])

    def test_a_streamed_turn_names_its_sources_in_headers_and_keeps_them(
        self, stack: ChatStack, providers: dict[str, str]
    ) -> None:
        with stack.user().http() as http:
            lisbon = _add(http, "Lisbon trams", LISBON)
            conversation = _conversation(http)
            with http.stream(
                "POST",
                f"/v1/conversations/{conversation}/messages",
                json={"content": QUESTION, "stream": True, "documents": "all"},
            ) as response:
                assert response.status_code == 200
                assert response.headers["x-parley-sources"] == f"{lisbon['id']}#0"
                assert sse_data(response.iter_lines())[-1] == "[DONE]"
            reply = http.get(f"/v1/conversations/{conversation}/messages").json()["data"][1]
        assert [(s["document_id"], s["chunk"]) for s in reply["sources"]] == [(lisbon["id"], 0)]

    @pytest.mark.parametrize("documents", ["some", ["not-a-uuid"], [str(uuid.uuid4())] * 101])
    def test_a_bad_documents_field_is_refused(self, stack: ChatStack, documents: Any) -> None:
        with stack.user().http() as http:
            conversation = _conversation(http)
            _problem(_turn(http, conversation, QUESTION, documents=documents), 422, "validation_error")
            assert http.get(f"/v1/conversations/{conversation}").json()["message_count"] == 0


class TestOpenAICompatibleRetrieval:
    def test_the_sdk_asks_with_parley_documents(self, stack: ChatStack, providers: dict[str, str]) -> None:
        configure(providers["primary"], record_messages=True)
        user = stack.user()
        with user.http() as http:
            lisbon = _add(http, "Lisbon trams", LISBON)
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]
        raw = user.client().chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=messages,  # type: ignore[arg-type]
            extra_body={"parley_documents": "all"},
        )
        assert raw.headers["x-parley-sources"] == f"{lisbon['id']}#0"
        assert raw.parse().choices[0].message.content
        sent = calls(providers["primary"])[-1]["messages"]
        # The caller's system message first, then the excerpts, then the question; nothing else changes.
        assert [m["role"] for m in sent] == ["system", "system", "user"]
        assert sent[0]["content"] == "Be brief."
        assert sent[2]["content"] == QUESTION
        assert sent[1]["content"].startswith("Excerpts from the user's documents")
        assert "Tram 28 climbs" in sent[1]["content"]

    def test_streamed_and_scoped_to_the_owner(self, stack: ChatStack, providers: dict[str, str]) -> None:
        configure(providers["primary"], record_messages=True)
        alice, bob = stack.user(), stack.user()
        with alice.http() as http:
            alices = _add(http, "Lisbon trams", LISBON)
        with bob.client().chat.completions.with_streaming_response.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": QUESTION}],
            stream=True,
            extra_body={"parley_documents": "all"},
        ) as response:
            assert "x-parley-sources" not in response.headers  # bob has no documents; alice's are not his
            assert list(response.iter_lines())
        assert "Tram 28" not in json.dumps(calls(providers["primary"])[-1]["messages"])
        with pytest.raises(openai.NotFoundError):
            bob.client().chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": QUESTION}],
                extra_body={"parley_documents": [alices["id"]]},
            )

    def test_bad_requests_are_openai_errors(self, stack: ChatStack, providers: dict[str, str]) -> None:
        client = stack.user().client()
        with pytest.raises(openai.BadRequestError) as no_question:
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "assistant", "content": "hi"}],
                extra_body={"parley_documents": "all"},
            )
        assert no_question.value.code == "documents_need_a_question"
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": QUESTION}],
                extra_body={"parley_documents": "some"},
            )
        with pytest.raises(openai.PermissionDeniedError):
            stack.user(rag_max_documents=0).client().chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": QUESTION}],
                extra_body={"parley_documents": "all"},
            )
        assert calls(providers["primary"]) == []
