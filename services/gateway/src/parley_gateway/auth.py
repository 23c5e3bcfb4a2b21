"""Who is calling: an access token, an API key, or a token of the configured external issuer.

Every failure is the same 401 (with ``WWW-Authenticate``), whatever was wrong with the credential.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal
from uuid import UUID

from fastapi import Depends, Request
from parley_common.errors import Problem

from parley_gateway.accounts import API_KEY_PREFIX
from parley_gateway.directory import Account
from parley_gateway.tokens import InvalidToken, unverified_issuer

if TYPE_CHECKING:
    from parley_gateway.state import Gateway


@dataclass(frozen=True, slots=True)
class Principal:
    account: Account
    api_key_id: UUID | None
    kind: Literal["session", "api_key", "external"]


def unauthorised(detail: str = "Invalid or expired credentials.") -> Problem:
    return Problem(401, "invalid_api_key", detail, headers={"www-authenticate": 'Bearer realm="parley"'})


def bearer(request: Request) -> str:
    value = request.headers.get("authorization", "")
    scheme, _, credential = value.partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        raise unauthorised("Missing bearer credentials.")
    return credential


async def authenticate(gw: Gateway, credential: str) -> Principal:
    if credential.startswith(API_KEY_PREFIX):
        record = await gw.directory.api_key(credential)
        if record is None:
            raise unauthorised()
        account = await gw.directory.account(record.user_id)
        if account is not None and record.user_revision < account.revision:
            # The key was cached before a change to its owner (perhaps its revocation): look again.
            gw.directory.drop_key(credential)
            record = await gw.directory.api_key(credential)
            if record is None:
                raise unauthorised()
        if account is None:
            raise unauthorised()
        gw.directory.note_key_use(record.id)
        return Principal(account, record.id, "api_key")
    if credential.count(".") != 2:
        raise unauthorised()
    external = gw.external
    if external is not None and unverified_issuer(credential) == external.issuer:
        try:
            token = await external.verify(credential)
        except InvalidToken:
            raise unauthorised() from None
        user_id = await gw.directory.external_account(token, gw.settings.signup_plan)
        account = await gw.directory.account(user_id)
        if account is None:
            raise unauthorised()
        return Principal(account, None, "external")
    try:
        verified = gw.tokens.verify_access_token(credential)
    except InvalidToken:
        raise unauthorised() from None
    account = await gw.directory.account(verified.user_id)
    if account is None:
        raise unauthorised()
    return Principal(account, None, "session")


async def current_principal(request: Request) -> Principal:
    gw: Gateway = request.app.state.gw
    return await authenticate(gw, bearer(request))


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
