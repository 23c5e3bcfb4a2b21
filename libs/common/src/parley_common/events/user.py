"""Events about accounts."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from pydantic import EmailStr

from parley_common.events.envelope import Event


class UserRegisteredV1(Event):
    """Emitted by the gateway when an account is created."""

    type: Literal["user.registered.v1"] = "user.registered.v1"
    user_id: UUID
    email: EmailStr


class UserDeletedV1(Event):
    """Emitted by the gateway when an account is deleted (its owner asked, or an administrator did).

    Every service erases what it holds of the user; ``email`` is here because the account row is gone by
    the time notify writes the confirmation to it.
    """

    type: Literal["user.deleted.v1"] = "user.deleted.v1"
    user_id: UUID
    email: EmailStr
