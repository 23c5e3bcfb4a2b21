"""Request-scoped dependencies: the authenticated caller (and the shared database session)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from parley_common.errors import Problem

from parley_gateway.security import AccessClaims, InvalidToken, TokenService


def _unauthorised(detail: str) -> Problem:
    return Problem(401, "invalid_api_key", detail, headers={"www-authenticate": 'Bearer realm="parley"'})


async def current_user(request: Request) -> AccessClaims:
    """The caller, from ``Authorization: Bearer <access token>``."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorised("Missing bearer token.")
    tokens: TokenService = request.app.state.tokens
    try:
        return tokens.verify_access_token(token.strip())
    except InvalidToken:
        raise _unauthorised("Invalid or expired token.") from None


CurrentUser = Annotated[AccessClaims, Depends(current_user)]
