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
    gateway_url: str,
    email: str | None = None,
    password: str = "correct horse battery",
    *,
    register: bool = True,
) -> tuple[str, str]:
    """(user id, access token) of a new account, or of an existing one with ``register=False``."""
    email = email or new_email()
    with httpx.Client(base_url=gateway_url, timeout=10) as client:
        if register:
            client.post("/v1/auth/register", json={"email": email, "password": password}).raise_for_status()
        login = client.post("/v1/auth/login", json={"email": email, "password": password})
        login.raise_for_status()
        token = login.json()["access_token"]
        me = client.get("/v1/me", headers={"authorization": f"Bearer {token}"})
        me.raise_for_status()
        return str(me.json()["id"]), token


def promote_to_admin(env: dict[str, str], email: str) -> None:
    """Make ``email`` an administrator with the operator CLI, as an operator would."""
    import os
    import subprocess

    from parley_common.testing.processes import venv_command

    result = subprocess.run(
        [venv_command("parley-gateway-admin"), "promote", email],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


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
