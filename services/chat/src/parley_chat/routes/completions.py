"""``POST /v1/chat/completions``, OpenAI-compatible, streaming and not."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from parley_common.auth.dependencies import Caller
from parley_common.auth.internal import InternalIdentity
from parley_common.errors import Problem
from parley_common.responses import EventStreamResponse
from parley_common.tokens import estimate_prompt_tokens

from parley_chat.completions import CACHE_HEADER, USAGE_HEADER, CacheStatus, CompletionService
from parley_chat.documents.service import DocumentScope, DocumentService, sources_header
from parley_chat.schemas import ChatCompletionRequest

router = APIRouter()

_SYSTEM_ROLES = ("system", "developer")


def cache_headers(status: CacheStatus) -> dict[str, str]:
    return {CACHE_HEADER: status} if status else {}


async def _with_excerpts(
    request: Request, body: ChatCompletionRequest, caller: InternalIdentity, model: str, scope: DocumentScope
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The request's messages with a system message of excerpts from the caller's documents in ``scope``
    (after the leading system messages), and the header naming them."""
    service: CompletionService = request.app.state.completions
    documents: DocumentService = request.app.state.documents
    messages = body.message_dicts()
    question = messages[-1].get("content") if messages[-1]["role"] == "user" else None
    if isinstance(question, list):  # content parts: the text ones make the question
        question = " ".join(p.get("text", "") for p in question if p.get("type") == "text").strip()
    if not isinstance(question, str) or not question:
        raise Problem(
            400,
            "documents_need_a_question",
            "parley_documents needs the last message to be the user's text.",
            param="parley_documents",
        )
    budget = service.settings.prompt_budget(model, body.max_completion_tokens or body.max_tokens)
    share = int((budget - estimate_prompt_tokens(messages)) * service.settings.rag_context_share)
    text, sources = await documents.excerpts_for(caller, question, scope, max(share, 0))
    if not sources:
        return messages, {}
    at = next((i for i, m in enumerate(messages) if m["role"] not in _SYSTEM_ROLES), len(messages))
    messages.insert(at, {"role": "system", "content": text})
    return messages, sources_header(sources)


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, caller: Caller, request: Request) -> Response:
    service: CompletionService = request.app.state.completions
    route = service.router.resolve(body.model, caller)
    messages: list[dict[str, Any]] | None = None
    headers: dict[str, str] = {}
    if body.parley_documents is not None:
        messages, headers = await _with_excerpts(request, body, caller, route.model, body.parley_documents)
    call = service.prepare(
        body,
        caller,
        request.state.request_id,
        usage_header=request.headers.get(USAGE_HEADER) == "1",
        messages=messages,
        route=route,
    )
    if body.stream:
        chunks, cached = await service.stream(call)
        return EventStreamResponse(chunks, headers={**headers, **cache_headers(cached)})
    payload, cached = await service.complete(call)
    return JSONResponse(payload, headers={**headers, **cache_headers(cached)})
