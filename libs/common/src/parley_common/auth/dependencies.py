"""FastAPI dependency for services behind the gateway: the verified caller, or a 401."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from parley_common.auth.internal import InternalIdentity, InternalTokenVerifier, InvalidInternalToken
from parley_common.auth.jwks import JWKSUnavailable
from parley_common.errors import Problem


async def internal_identity(request: Request) -> InternalIdentity:
    """The identity in the gateway's internal token (``Authorization: Bearer …``)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Problem(401, "missing_token", "This service is reached through the gateway.")
    verifier: InternalTokenVerifier = request.app.state.internal_verifier
    try:
        identity = await verifier.verify(token.strip())
    except InvalidInternalToken:
        raise Problem(401, "invalid_token", "The internal token is not valid.") from None
    except JWKSUnavailable:
        raise Problem(503, "keys_unavailable", "The gateway's keys could not be fetched.") from None
    request.state.identity = identity
    return identity


Caller = Annotated[InternalIdentity, Depends(internal_identity)]
