"""``POST /v1/chat/completions``, OpenAI-compatible, streaming and not."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from parley_common.auth.dependencies import Caller
from parley_common.responses import EventStreamResponse

from parley_chat.completions import CACHE_HEADER, USAGE_HEADER, CacheStatus, CompletionService
from parley_chat.schemas import ChatCompletionRequest

router = APIRouter()


def cache_headers(status: CacheStatus) -> dict[str, str]:
    return {CACHE_HEADER: status} if status else {}


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, caller: Caller, request: Request) -> Response:
    service: CompletionService = request.app.state.completions
    call = service.prepare(
        body, caller, request.state.request_id, usage_header=request.headers.get(USAGE_HEADER) == "1"
    )
    if body.stream:
        chunks, cached = await service.stream(call)
        return EventStreamResponse(chunks, headers=cache_headers(cached))
    payload, cached = await service.complete(call)
    return JSONResponse(payload, headers=cache_headers(cached))
