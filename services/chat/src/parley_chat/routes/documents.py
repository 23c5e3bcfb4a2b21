"""``/v1/documents``: add, list, get and delete the documents a user keeps for retrieval. Owner-scoped:
another user's document does not exist (404), whatever the method."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from parley_common.auth.dependencies import Caller

from parley_chat.conversations.schemas import page
from parley_chat.documents.schemas import DocumentCreate, document_out
from parley_chat.documents.service import DocumentService, parse_document_id

router = APIRouter(prefix="/v1/documents", tags=["documents"])

Limit = Annotated[int, Query(ge=1, le=100)]


def _service(request: Request) -> DocumentService:
    service: DocumentService = request.app.state.documents
    return service


@router.post("", status_code=201)
async def create_document(body: DocumentCreate, caller: Caller, request: Request) -> dict[str, Any]:
    return document_out(await _service(request).create(caller, body))


@router.get("")
async def list_documents(
    caller: Caller, request: Request, limit: Limit = 20, cursor: str | None = None
) -> dict[str, Any]:
    rows, next_cursor = await _service(request).page(caller, limit, cursor)
    return page([document_out(d) for d in rows], next_cursor)


@router.get("/{document_id}")
async def get_document(document_id: str, caller: Caller, request: Request) -> dict[str, Any]:
    return document_out(await _service(request).get(caller, parse_document_id(document_id)))


@router.delete("/{document_id}", status_code=204)
async def delete_document(document_id: str, caller: Caller, request: Request) -> Response:
    await _service(request).delete(caller, parse_document_id(document_id))
    return Response(status_code=204)
