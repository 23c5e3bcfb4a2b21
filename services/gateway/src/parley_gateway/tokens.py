"""Access tokens (ES256 JWTs the gateway issues) and tokens of an external OIDC issuer.

Validation follows RFC 8725: one fixed algorithm list per issuer, never the token's own choice; ``kid``
only selects among keys already trusted; ``exp``, ``iat``, ``nbf``, ``iss``, ``aud``, ``sub`` and ``jti``
required, with a few seconds of leeway; the explicit type ``at+jwt`` (RFC 9068) keeps access tokens
apart from internal tokens (another type and audience) and refresh tokens (opaque, not JWTs at all).

A verified access token is remembered until it expires, so the signature of a token seen before is not
checked again (about 110 µs each); only tokens that passed every check are remembered.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import jwt
from parley_common.auth.jwks import JWKSUnavailable, KeySet
from parley_common.auth.keys import SigningKey, generate_private_key_pem, jwks_document, load_signing_keys
from parley_common.logs import get_logger

from parley_gateway.config import Settings

log = get_logger(__name__)

ACCESS_TYP = "at+jwt"
ALGORITHMS = ["ES256"]
LEEWAY = 5
MAX_TOKEN_BYTES = 8192
_REQUIRED = ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]
_CACHE_LIMIT = 100_000


class InvalidToken(Exception):
    pass


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    user_id: UUID
    expires_at: float


@dataclass(frozen=True, slots=True)
class ExternalToken:
    issuer: str
    subject: str
    email: str | None
    expires_at: float


def unverified_issuer(token: str) -> str | None:
    """The ``iss`` a JWT claims, only to choose which issuer's rules and keys will verify it."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return None
    issuer = claims.get("iss") if isinstance(claims, dict) else None
    return issuer if isinstance(issuer, str) else None


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
        self._verified: dict[str, VerifiedToken] = {}

    def jwks(self) -> dict[str, Any]:
        return jwks_document(self.keys)

    def issue_access_token(self, user_id: UUID) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": str(user_id),
            "iat": now,
            "nbf": now,
            "exp": now + self.ttl,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(
            claims,
            self.signing_key.private_key,
            algorithm="ES256",
            headers={"kid": self.signing_key.kid, "typ": ACCESS_TYP},
        )

    def verify_access_token(self, token: str) -> VerifiedToken:
        known = self._verified.get(token)
        if known is not None:
            if known.expires_at + LEEWAY > time.time():
                return known
            del self._verified[token]
            raise InvalidToken("expired")
        if len(token) > MAX_TOKEN_BYTES:
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
                options={"require": _REQUIRED},
            )
            verified = VerifiedToken(user_id=UUID(claims["sub"]), expires_at=float(claims["exp"]))
        except (jwt.PyJWTError, ValueError, KeyError, TypeError) as exc:
            raise InvalidToken(type(exc).__name__) from exc
        if len(self._verified) >= _CACHE_LIMIT:
            self._verified.clear()  # rare; every entry is cheap to verify again
        self._verified[token] = verified
        return verified


class ExternalIssuer:
    """An OIDC provider whose ID/access tokens are accepted; keys come from its JWKS URL (cached)."""

    def __init__(self, settings: Settings) -> None:
        assert settings.oidc_issuer
        assert settings.oidc_jwks_url
        self.issuer = settings.oidc_issuer
        self.audience = settings.oidc_audience
        self.algorithms = list(settings.oidc_algorithms)
        self.keys = KeySet(
            url=settings.oidc_jwks_url, cooldown=settings.oidc_jwks_cooldown, algorithms=self.algorithms
        )
        self._verified: dict[str, ExternalToken] = {}

    async def verify(self, token: str) -> ExternalToken:
        known = self._verified.get(token)
        if known is not None and known.expires_at + LEEWAY > time.time():
            return known
        if len(token) > MAX_TOKEN_BYTES:
            raise InvalidToken("token too large")
        try:
            header = jwt.get_unverified_header(token)
            kid, alg = header.get("kid"), header.get("alg")
            if not isinstance(kid, str) or alg not in self.algorithms:
                raise InvalidToken("unexpected header")
            found = await self.keys.get_with_algorithm(kid)
            if found is None or found[1] != alg:
                raise InvalidToken("unknown key")
            claims = jwt.decode(
                token,
                key=found[0],
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY,
                options={"require": ["exp", "iat", "iss", "sub"], "verify_aud": self.audience is not None},
            )
        except JWKSUnavailable as exc:
            raise InvalidToken("issuer keys unavailable") from exc
        except (jwt.PyJWTError, ValueError, KeyError, TypeError) as exc:
            raise InvalidToken(type(exc).__name__) from exc
        subject = claims["sub"]
        if not isinstance(subject, str) or not 0 < len(subject) <= 255:
            raise InvalidToken("bad subject")
        email = claims.get("email") if claims.get("email_verified") is True else None
        verified = ExternalToken(
            self.issuer, subject, email if isinstance(email, str) else None, claims["exp"]
        )
        if len(self._verified) >= _CACHE_LIMIT:
            self._verified.clear()
        self._verified[token] = verified
        return verified
