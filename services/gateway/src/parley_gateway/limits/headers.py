"""Rate-limit response headers: the IETF draft's ``RateLimit-Policy``/``RateLimit`` and OpenAI's
``x-ratelimit-*``, from one admission decision.

References: draft-ietf-httpapi-ratelimit-headers (structured-field lists of named policies with ``q``
quota, ``w`` window, ``r`` remaining and ``t`` seconds until reset); OpenAI's API reference, "Rate limits"
(``x-ratelimit-limit-requests``, ``x-ratelimit-remaining-tokens``, ``x-ratelimit-reset-requests: 1s``).
"""

from __future__ import annotations

import math

from parley_gateway.limits.keys import seconds_to
from parley_gateway.limits.limiter import Decision, retry_after_header


def openai_duration(seconds: float) -> str:
    """``20ms``, ``1s``, ``1.5s``, ``6m0s``: the format OpenAI uses in its reset headers."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    if minutes >= 60:
        hours, minutes = divmod(minutes, 60)
        return f"{int(hours)}h{int(minutes)}m{text}"
    return f"{int(minutes)}m{text}" if minutes else text


def rate_limit_headers(decision: Decision) -> dict[str, str]:
    headers: dict[str, str] = {}
    policies: list[str] = []
    states: list[str] = []
    window = int(decision.window) if decision.window == int(decision.window) else decision.window
    if decision.requests is not None:
        policies.append(f'"requests";q={decision.requests};w={window}')
        headers["x-ratelimit-limit-requests"] = str(decision.requests)
        if decision.requests_left is not None:
            reset = decision.requests_reset
            states.append(f'"requests";r={decision.requests_left};t={math.ceil(reset)}')
            headers["x-ratelimit-remaining-requests"] = str(decision.requests_left)
            headers["x-ratelimit-reset-requests"] = openai_duration(reset)
    if decision.tokens is not None:
        policies.append(f'"tokens";q={decision.tokens};w={window};qu="tokens"')
        headers["x-ratelimit-limit-tokens"] = str(decision.tokens)
        if decision.tokens_left is not None:
            states.append(f'"tokens";r={decision.tokens_left};t={math.ceil(decision.tokens_reset)}')
            headers["x-ratelimit-remaining-tokens"] = str(decision.tokens_left)
            headers["x-ratelimit-reset-tokens"] = openai_duration(decision.tokens_reset)
    if decision.streams is not None:
        policies.append(f'"streams";q={decision.streams};qu="concurrent-requests"')
        if decision.streams_left is not None:
            states.append(f'"streams";r={decision.streams_left}')
    for name, period, limit, left in (
        ("daily-tokens", "day", decision.daily, decision.daily_left),
        ("monthly-tokens", "month", decision.monthly, decision.monthly_left),
    ):
        if limit is None:
            continue
        policies.append(f'"{name}";q={limit};qu="tokens"')
        if left is not None:
            states.append(f'"{name}";r={max(0, left)};t={math.ceil(seconds_to(period))}')
    if policies:
        headers["ratelimit-policy"] = ", ".join(policies)
    if states:
        headers["ratelimit"] = ", ".join(states)
    if decision.refused:
        headers["retry-after"] = retry_after_header(decision.retry_after)
        headers["retry-after-ms"] = str(max(1, math.ceil(decision.retry_after * 1000)))
    return headers
