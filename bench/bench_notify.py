"""Email throughput: user.registered.v1 events on the bus → welcome emails accepted by a local SMTP server.

One notify worker process at its default concurrency (1, so a kill -9 duplicates at most one email),
keeping its SMTP connection open between emails. Scaling out is more worker processes.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from bench.context import BenchContext
from tests.notify.support import start_smtp_sink
from tests.webhooks.events import registered
from tests.webhooks.support import Identity, Isolated, base_env, publish, start_notify

N = 1000


def run(ctx: BenchContext) -> dict[str, Any]:
    sink = start_smtp_sink(ctx.processes)
    res = Isolated(ctx.database_url, ctx.amqp_url, ctx.amqp_url.rsplit("/", 1)[-1])
    start_notify(ctx.processes, {**base_env(res, Identity.new(), **sink.env())})
    events = [registered(uuid.uuid4()) for _ in range(N)]
    started = time.perf_counter()
    publish(ctx.amqp_url, events)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and len(sink.messages()) < N:
        time.sleep(0.2)
    elapsed = time.perf_counter() - started
    received = len(sink.messages())
    return {
        "summary": {"emails_per_s_one_worker": round(received / elapsed)},
        "events": N,
        "received": received,
        "seconds": round(elapsed, 2),
        "smtp": "local aiosmtpd sink, plain SMTP on loopback, one kept connection",
    }
