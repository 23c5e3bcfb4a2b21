"""Token quotas: reserved before forwarding, settled with chat's usage, never overspent under concurrency,
and exact against the ledger once every call has landed there."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import httpx
import openai
import pytest
import redis
from parley_common.testing.processes import ProcessManager

from tests.gateway.support import CHAT_BODY, Stack, start_stack, wait_until
from tests.support.db import ledger_rows
from tests.support.platform import PlatformConfig

QUOTA = 10_000


@pytest.fixture(scope="module")
def stack(manager: ProcessManager, platform_config: PlatformConfig) -> Stack:
    # The provider answers after 1.5 s, so all 50 calls are in flight, holding reservations, together.
    return start_stack(
        manager,
        platform_config,
        provider_args=("--first-token-delay-ms", "1500"),
        with_ledger=True,
        gateways=2,
    )


def test_50_concurrent_calls_never_spend_more_than_the_quota(stack: Stack, database_url: str) -> None:
    admin = stack.admin()
    user = stack.register()
    stack.set_user(
        admin,
        user.id,
        plan_overrides={
            "daily_token_quota": QUOTA,
            "monthly_token_quota": 10 * QUOTA,
            "requests_per_minute": 1000,
            "tokens_per_minute": 10_000_000,
        },
    )
    body = {**CHAT_BODY, "max_tokens": 1000}

    async def fire() -> list[tuple[int, dict[str, Any], str | None]]:
        async with aiohttp.ClientSession() as session:

            async def one(i: int) -> tuple[int, dict[str, Any], str | None]:
                url = stack.urls[i % 2] + "/v1/chat/completions"
                async with session.post(url, json=body, headers=user.headers) as response:
                    return (
                        response.status,
                        json.loads(await response.read()),
                        response.headers.get("retry-after"),
                    )

            return await asyncio.gather(*(one(i) for i in range(50)))

    replies = asyncio.run(fire())
    admitted = [r for r in replies if r[0] == 200]
    refused = [r for r in replies if r[0] != 200]
    # Each call reserves its prompt estimate + max_tokens (over 1,000): at most 9 fit in 10,000.
    assert 1 <= len(admitted) <= 10
    assert {r[0] for r in refused} == {429}
    assert {r[1]["error"]["code"] for r in refused} == {"insufficient_quota"}
    assert all(r[2] is not None and int(r[2]) >= 1 for r in refused)

    rows = wait_until(
        lambda: (found := ledger_rows(database_url, user.id)) and len(found) >= len(admitted) and found,
        timeout=30,
        what="every admitted call in the ledger",
    )
    assert len(rows) == len(admitted)
    spent = sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows)
    assert spent == sum(r[1]["usage"]["total_tokens"] for r in admitted)
    assert spent <= QUOTA

    limits = httpx.get(stack.url + "/v1/me", headers=user.headers).json()["limits"]["daily_tokens"]
    assert (limits["limit"], limits["used"], limits["reserved"]) == (QUOTA, spent, 0)
    assert limits["remaining"] == QUOTA - spent
    with redis.Redis.from_url(stack.config.redis_url) as client:
        tag = f"{{{user.id}}}"
        assert int(client.get(f"{stack.prefix}quota:{tag}:reserved") or 0) == 0
        assert client.hlen(f"{stack.prefix}quota:{tag}:resv") == 0
        assert client.zcard(f"{stack.prefix}quota:{tag}:resv:exp") == 0


def test_a_spent_quota_is_a_rate_limit_error_until_the_period_ends(stack: Stack) -> None:
    admin = stack.admin()
    user = stack.register()
    stack.set_user(admin, user.id, plan_overrides={"daily_token_quota": 30})
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key=user.access, max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", messages=CHAT_BODY["messages"], max_tokens=5)  # type: ignore[arg-type]
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="gpt-4o-mini", messages=CHAT_BODY["messages"], max_tokens=20)  # type: ignore[arg-type]
    assert refused.value.code == "insufficient_quota"
    # Spent, not merely held by other calls: come back tomorrow (UTC).
    assert int(refused.value.response.headers["retry-after"]) > 1
    assert '"daily-tokens";q=30' in refused.value.response.headers["ratelimit-policy"]
