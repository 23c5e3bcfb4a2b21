"""``POST /v1/chat/completions``, OpenAI-compatible, streaming and not."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from parley_common.auth.dependencies import Caller

from parley_chat.completions import CompletionService
from parley_chat.schemas import ChatCompletionRequest

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, caller: Caller, request: Request) -> Response:
    service: CompletionService = request.app.state.completions
    request_id: str = request.state.request_id
    if body.stream:
        chunks = await service.stream(body, caller, request_id)
        return StreamingResponse(
            chunks, media_type="text/event-stream", headers={"cache-control": "no-cache"}
        )
    return JSONResponse(await service.complete(body, caller, request_id))
