"""Webhook delivery throughput: events on the bus → signed POSTs accepted by a local receiver.

One endpoint, N events, a receiver answering 200 at once; the figure is events per second from the
first publish to the last delivery marked succeeded. Run twice on the same data shape: the worker as
built (a pool of delivery threads) and the same worker with one thread, which is what a prefork worker
with one child per core would do for I/O-bound work.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from parley_common.testing.processes import ProcessManager

from bench.context import BenchContext
from tests.support.db import query
from tests.webhooks.events import message_completed
from tests.webhooks.support import Isolated, Receiver, start_receiver, start_stack

N = 2000
SETTINGS = {
    "PARLEY_WEBHOOKS_ALLOW_HTTP": "true",
    "PARLEY_WEBHOOKS_TEST_ALLOW_CIDRS": "127.0.0.1/32",
    "PARLEY_WEBHOOKS_POLL_INTERVAL": "0.2",
}


def _round(ctx: BenchContext, manager: ProcessManager, receiver: Receiver, threads: int) -> dict[str, Any]:
    res = Isolated(ctx.database_url, ctx.amqp_url, ctx.amqp_url.rsplit("/", 1)[-1])
    stack = start_stack(manager, res, SETTINGS, worker_env={"PARLEY_WORKER_CONCURRENCY": str(threads)})
    user = uuid.uuid4()
    with stack.client(user) as client:
        endpoint = client.post(
            "/endpoints",
            json={
                "url": receiver.url(f"/ok/{uuid.uuid4().hex}"),
                "event_types": ["conversation.message_completed.v1"],
            },
        ).json()
    events = [message_completed(user) for _ in range(N)]
    started = time.perf_counter()
    stack.publish(events)
    deadline = time.monotonic() + 600
    done = 0
    while time.monotonic() < deadline:
        done = query(
            ctx.database_url,
            "SELECT count(*) AS n FROM webhooks.deliveries WHERE endpoint_id = :e AND status = 'succeeded'",
            e=endpoint["id"],
        )[0]["n"]
        if done == N:
            break
        time.sleep(0.2)
    elapsed = time.perf_counter() - started
    for process in stack.processes.values():
        process.stop()
    return {
        "threads": threads,
        "events": N,
        "delivered": done,
        "seconds": round(elapsed, 2),
        "per_s": round(done / elapsed),
    }


def run(ctx: BenchContext) -> dict[str, Any]:
    receiver = start_receiver(ctx.processes)
    pooled = _round(ctx, ctx.processes, receiver, threads=8)
    single = _round(ctx, ctx.processes, receiver, threads=1)
    return {
        "summary": {
            "deliveries_per_s_8_threads": pooled["per_s"],
            "deliveries_per_s_1_thread": single["per_s"],
            "speedup": round(pooled["per_s"] / max(single["per_s"], 1), 1),
        },
        "pooled": pooled,
        "single": single,
        "receiver": "local stdlib ThreadingHTTPServer answering 200 at once (receiver latency ~0)",
        "includes": "fan-out from RabbitMQ, beat polling every 0.2 s, two DB transactions and one POST per delivery",
    }
