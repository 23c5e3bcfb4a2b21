"""Passwords (argon2id) and access tokens (ES256 JWTs)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from parley_common.auth.keys import SigningKey, generate_private_key_pem, jwks_document, load_signing_keys
from parley_common.logs import get_logger

from parley_gateway.config import Settings

log = get_logger(__name__)

ACCESS_TYP = "at+jwt"  # RFC 9068; refresh and internal tokens have other types and audiences
ALGORITHMS = ["ES256"]
LEEWAY = 5

_hasher = PasswordHasher()  # argon2id with the library's RFC 9106 "low memory" defaults
# Verified against when the email is unknown, so a login takes the same time either way.
_DUMMY_HASH = _hasher.hash("parley-timing-equaliser")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


@dataclass(frozen=True)
class AccessClaims:
    user_id: UUID
    role: str
    plan: str


class InvalidToken(Exception):
    pass


class TokenService:
    """Issues and verifies access tokens with the configured key ring."""

    def __init__(self, settings: Settings) -> None:
        if settings.jwt_private_keys is None:
            log.warning(
                "jwt.ephemeral_key", reason="PARLEY_JWT_PRIVATE_KEYS unset; tokens die with this process"
            )
            pem = generate_private_key_pem()
        else:
            pem = settings.jwt_private_keys.get_secret_value()
        self.keys: list[SigningKey] = load_signing_keys(pem)
        self.signing_key = self.keys[0]
        self._public = {key.kid: key.private_key.public_key() for key in self.keys}
        self.issuer = settings.jwt_issuer
        self.audience = settings.jwt_audience
        self.ttl = settings.access_token_ttl

    def jwks(self) -> dict[str, Any]:
        return jwks_document(self.keys)

    def issue_access_token(self, user_id: UUID, role: str, plan: str) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": str(user_id),
            "iat": now,
            "nbf": now,
            "exp": now + self.ttl,
            "jti": uuid.uuid4().hex,
            "role": role,
            "plan": plan,
        }
        return jwt.encode(
            claims,
            self.signing_key.private_key,
            algorithm="ES256",
            headers={"kid": self.signing_key.kid, "typ": ACCESS_TYP},
        )

    def verify_access_token(self, token: str) -> AccessClaims:
        if len(token) > 8192:
            raise InvalidToken("token too large")
        try:
            header = jwt.get_unverified_header(token)
            key = self._public.get(header.get("kid", ""))
            if key is None or header.get("typ") != ACCESS_TYP or header.get("alg") not in ALGORITHMS:
                raise InvalidToken("unexpected header or unknown key")
            claims = jwt.decode(
                token,
                key=key,
                algorithms=ALGORITHMS,
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY,
                options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
            )
            return AccessClaims(
                user_id=UUID(claims["sub"]),
                role=str(claims.get("role", "user")),
                plan=str(claims.get("plan", "free")),
            )
        except (jwt.PyJWTError, ValueError, KeyError) as exc:
            raise InvalidToken(type(exc).__name__) from exc
