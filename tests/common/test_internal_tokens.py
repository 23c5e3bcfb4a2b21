"""Internal tokens: what the gateway signs, the services verify, and nothing else passes."""

from __future__ import annotations

import time
import uuid

import jwt
import pytest
from parley_common.auth.internal import (
    INTERNAL_AUDIENCE,
    INTERNAL_ISSUER,
    INTERNAL_TYP,
    InternalIdentity,
    InternalTokenVerifier,
    InvalidInternalToken,
    PlanClaims,
    mint_internal_token,
)
from parley_common.auth.jwks import KeySet
from parley_common.auth.keys import generate_private_key_pem, jwks_document, load_signing_keys

KEY = load_signing_keys(generate_private_key_pem())[0]
OTHER = load_signing_keys(generate_private_key_pem())[0]
VERIFIER = InternalTokenVerifier(KeySet(document=jwks_document([KEY])))
IDENTITY = InternalIdentity(
    user_id=uuid.uuid4(), plan=PlanClaims(name="pro", allowed_models=["a"], cache="exact")
)


def claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    base: dict[str, object] = {
        "iss": INTERNAL_ISSUER,
        "aud": INTERNAL_AUDIENCE,
        "sub": str(IDENTITY.user_id),
        "iat": now,
        "exp": now + 60,
        "jti": "j",
        "role": "user",
        "plan": {},
    }
    base.update(overrides)
    return base


def sign(
    payload: dict[str, object],
    key: object = KEY.private_key,
    kid: str = KEY.kid,
    typ: str = INTERNAL_TYP,
    alg: str = "ES256",
) -> str:
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid, "typ": typ})  # type: ignore[arg-type]


async def test_round_trip_keeps_identity_and_plan() -> None:
    assert await VERIFIER.verify(mint_internal_token(KEY, IDENTITY)) == IDENTITY


async def test_rag_limits_round_trip_and_default_to_the_free_plans() -> None:
    unlimited = InternalIdentity(
        user_id=uuid.uuid4(), plan=PlanClaims(rag_max_documents=None, rag_max_document_bytes=5_000_000)
    )
    plan = (await VERIFIER.verify(mint_internal_token(KEY, unlimited))).plan
    assert (plan.rag_max_documents, plan.rag_max_document_bytes) == (None, 5_000_000)
    # A token signed before plans had the limits (a gateway not yet upgraded): the free plan's figures.
    older = (await VERIFIER.verify(sign(claims(plan={"name": "pro"})))).plan
    assert (older.rag_max_documents, older.rag_max_document_bytes) == (10, 100_000)


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(sign(claims(exp=int(time.time()) - 60)), id="expired"),
        pytest.param(sign(claims(aud="parley-api")), id="user-access-token-audience"),
        pytest.param(sign(claims(iss="someone-else")), id="wrong-issuer"),
        pytest.param(sign(claims(), key=OTHER.private_key, kid=KEY.kid), id="foreign-key-known-kid"),
        pytest.param(sign(claims(), key=OTHER.private_key, kid=OTHER.kid), id="unknown-kid"),
        pytest.param(sign(claims(), typ="at+jwt"), id="wrong-type"),
        pytest.param(
            jwt.encode(claims(), "s" * 32, algorithm="HS256", headers={"kid": KEY.kid, "typ": INTERNAL_TYP}),
            id="hs256",
        ),
        pytest.param(
            jwt.encode(claims(), None, algorithm="none", headers={"kid": KEY.kid, "typ": INTERNAL_TYP}),
            id="alg-none",
        ),
        pytest.param(sign({k: v for k, v in claims().items() if k != "exp"}), id="no-exp"),
        pytest.param("x" * 9000, id="oversized"),
        pytest.param("not.a.token", id="garbage"),
    ],
)
async def test_forgeries_are_refused(token: str) -> None:
    with pytest.raises(InvalidInternalToken):
        await VERIFIER.verify(token)


async def test_tampered_payload_is_refused() -> None:
    header, _payload, signature = mint_internal_token(KEY, IDENTITY).split(".")
    forged = jwt.utils.base64url_encode(
        b'{"sub":"' + str(uuid.uuid4()).encode() + b'","role":"admin"}'
    ).decode()
    with pytest.raises(InvalidInternalToken):
        await VERIFIER.verify(f"{header}.{forged}.{signature}")
