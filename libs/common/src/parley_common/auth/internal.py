"""The internal token: how a service behind the gateway learns who is calling, and verifies it.

The gateway authenticates the client (JWT or API key), then forwards a token it signs itself, valid for
a minute, with audience ``parley-internal`` (a user's access token has another audience and is refused
here, and the other way round). It carries the caller's id, role and plan snapshot, so chat can route,
cache and bound retrieval documents by plan without reading the gateway's tables. Services never trust
a bare identity header.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal
from uuid import UUID

import jwt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from parley_common.auth.jwks import KeySet
from parley_common.auth.keys import SigningKey
from parley_common.settings import InternalAuthSettings

INTERNAL_AUDIENCE = "parley-internal"
INTERNAL_ISSUER = "parley-gateway"
INTERNAL_TYP = "parley-internal+jwt"
ALGORITHMS = ["ES256"]  # RFC 8725 §3.1: one fixed list, never taken from the token
MAX_TOKEN_BYTES = 8192
LEEWAY_SECONDS = 5


class PlanClaims(BaseModel):
    """The parts of the caller's plan the services behind the gateway act on."""

    model_config = ConfigDict(frozen=True, extra="allow")

    name: str = "free"
    default_model: str | None = None
    allowed_models: list[str] = Field(default_factory=list)
    model_routes: dict[str, str] = Field(default_factory=dict, description="requested model → model used")
    cache: Literal["off", "exact", "semantic"] = "off"
    daily_token_quota: int | None = Field(None, description="None: unlimited")
    monthly_token_quota: int | None = Field(None, description="None: unlimited")
    rag_max_documents: int | None = Field(
        10,
        description="Documents a user may keep for retrieval; 0: retrieval not in the plan; None: unlimited",
    )
    rag_max_document_bytes: int = Field(100_000, description="Largest document accepted, in UTF-8 bytes")


class InternalIdentity(BaseModel):
    """Who the gateway says is calling."""

    model_config = ConfigDict(frozen=True)

    user_id: UUID
    role: Literal["user", "admin"] = "user"
    plan: PlanClaims = Field(default_factory=PlanClaims)
    api_key_id: UUID | None = None


class InvalidInternalToken(Exception):
    """The token is missing, malformed, expired, or not signed by a known gateway key."""


def mint_internal_token(key: SigningKey, identity: InternalIdentity, *, ttl: int = 60) -> str:
    """Sign ``identity`` for the services behind the gateway."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": INTERNAL_ISSUER,
        "aud": INTERNAL_AUDIENCE,
        "sub": str(identity.user_id),
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "jti": uuid.uuid4().hex,
        "role": identity.role,
        "plan": identity.plan.model_dump(mode="json"),
    }
    if identity.api_key_id is not None:
        claims["akid"] = str(identity.api_key_id)
    return jwt.encode(
        claims, key.private_key, algorithm="ES256", headers={"kid": key.kid, "typ": INTERNAL_TYP}
    )


class InternalTokenVerifier:
    """Verifies internal tokens against the gateway's key set."""

    def __init__(self, keys: KeySet) -> None:
        self.keys = keys

    async def verify(self, token: str) -> InternalIdentity:
        if len(token) > MAX_TOKEN_BYTES:
            raise InvalidInternalToken("token too large")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidInternalToken("malformed token") from exc
        kid = header.get("kid")
        if (
            header.get("alg") not in ALGORITHMS
            or not isinstance(kid, str)
            or header.get("typ") != INTERNAL_TYP
        ):
            raise InvalidInternalToken("unexpected token header")
        key = await self.keys.get(kid)
        if key is None:
            raise InvalidInternalToken("unknown signing key")
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=ALGORITHMS,
                audience=INTERNAL_AUDIENCE,
                issuer=INTERNAL_ISSUER,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
            )
            return InternalIdentity(
                user_id=claims["sub"],
                role=claims.get("role", "user"),
                plan=claims.get("plan") or {},
                api_key_id=claims.get("akid"),
            )
        except (jwt.PyJWTError, ValidationError, KeyError) as exc:
            raise InvalidInternalToken(type(exc).__name__) from exc


def verifier_for(settings: InternalAuthSettings) -> InternalTokenVerifier:
    """The verifier a service behind the gateway uses: the inline JWKS when configured (it is then never
    refetched), else the gateway's JWKS URL."""
    return InternalTokenVerifier(KeySet(url=settings.internal_jwks_url, document=settings.internal_jwks))
