"""Who is calling: an access token, an API key, or a token of the configured external issuer.

Every failure is the same 401 (with ``WWW-Authenticate``), whatever was wrong with the credential.

The forwarded routes compare the cached account's revision with Redis's copy in their admission script;
the account routes (``/v1/me``, ``/v1/api-keys``, ``/v1/admin``) do it through :func:`checked_principal`,
so a change made on another replica (a revoked key, a deleted account) applies to them at once too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal
from uuid import UUID

from fastapi import Depends, Request
from parley_common.errors import Problem

from parley_gateway.accounts import API_KEY_PREFIX
from parley_gateway.directory import Account
from parley_gateway.limits.limiter import StaleIdentity
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
            # Deleted since this replica last saw the subject: like a first sign-in, a new account.
            gw.directory.drop_external(token)
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


def stale_identity(gw: Gateway, account: Account, state: dict[str, Any]) -> StaleIdentity | None:
    """Whether Redis holds newer revisions (of the plans, or of this account) than this replica's cache."""
    plans, user = state["plans_revision"], state["user_revision"]
    if (plans and int(plans) > gw.directory.plans_revision) or (user and int(user) > account.revision):
        return StaleIdentity(plans, user)
    return None


async def checked_principal(gw: Gateway, credential: str) -> tuple[Principal, dict[str, Any] | None]:
    """:func:`authenticate`, with the cached identity checked against the revisions in Redis.

    Also returns the limits' state read for the check (None while Redis is away: the cache then
    expires after ``identity_cache_seconds`` instead).
    """
    principal = await authenticate(gw, credential)
    for attempt in range(3):
        account = principal.account
        state = await gw.limiter.peek(account.keys, account.plan)
        # Still outdated after two reloads: Redis holds revisions the database never had (a restored
        # database, a shared Redis). Serve from the tables rather than refuse.
        stale = None if state is None or attempt == 2 else stale_identity(gw, account, state)
        if stale is None:
            return principal, state
        await gw.directory.refresh_after(stale, account.id)
        principal = await authenticate(gw, credential)
    raise AssertionError("unreachable: the last attempt skips the revision check")


async def current_principal(request: Request) -> Principal:
    gw: Gateway = request.app.state.gw
    principal, _ = await checked_principal(gw, bearer(request))
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
