"""Small helpers for talking to a running gateway the way a client would."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import TypeVar

import httpx

T = TypeVar("T")


def new_email() -> str:
    return f"user-{uuid.uuid4().hex[:12]}@example.com"


def register_and_login(
    gateway_url: str, email: str | None = None, password: str = "correct horse battery"
) -> tuple[str, str]:
    """(user id, access token) of a new account."""
    email = email or new_email()
    with httpx.Client(base_url=gateway_url, timeout=10) as client:
        created = client.post("/v1/auth/register", json={"email": email, "password": password})
        created.raise_for_status()
        login = client.post("/v1/auth/login", json={"email": email, "password": password})
        login.raise_for_status()
        return created.json()["id"], login.json()["access_token"]


def eventually(
    check: Callable[[], T | None], *, timeout: float = 15.0, interval: float = 0.1, what: str = "condition"
) -> T:
    """Poll ``check`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout}s (last: {last!r})")
