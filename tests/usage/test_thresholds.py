"""quota.threshold_crossed.v1 through the real worker and parley-usage-relay: once per crossing, however
often the usage events are delivered."""

from __future__ import annotations

import json
import random
import uuid

from parley_common.events import QuotaThresholdCrossedV1
from parley_common.messaging import topology
from parley_common.messaging.celery_protocol import event_message
from parley_common.testing.net import free_port
from parley_common.testing.processes import ProcessManager, venv_command

from tests.support.metrics import metric
from tests.usage.support import (
    drain_queue,
    ledger_count,
    publish,
    rows,
    start_worker,
    usage_event,
    wait_until,
)


class TestThresholdEvents:
    def test_each_crossing_is_published_once_under_duplicate_deliveries(
        self, processes: ProcessManager, usage_env: dict[str, str], ledger_partitions: str, figures: list[str]
    ) -> None:
        url = usage_env["PARLEY_RABBITMQ_URL"]
        start_worker(processes, usage_env, concurrency=2, PARLEY_WORKER_BATCH_SIZE="7")
        relay_metrics = free_port()
        relay = processes.spawn(
            "usage-relay",
            [venv_command("parley-usage-relay")],
            {**usage_env, "PARLEY_METRICS_PORT": str(relay_metrics)},
        )
        relay.wait_for_log("relay.connected", timeout=120)
        user = uuid.uuid4()
        quota = {"daily_token_quota": 10_000, "monthly_token_quota": 1_000_000, "plan": "free"}
        events = [
            usage_event(user, n, prompt=100, completion=0, **quota) for n in range(120)
        ]  # 12,000 tokens
        # Every event delivered twice, in a shuffled order, to two consumers taking small batches.
        deliveries = [*events, *events]
        random.Random(5).shuffle(deliveries)
        publish(url, [event_message(e) for e in deliveries])

        wait_until(lambda: ledger_count(ledger_partitions, [e.id for e in events]) == 120, timeout=60)
        announced = wait_until(
            lambda: (
                (
                    r := rows(
                        ledger_partitions,
                        "SELECT event_id, published_at FROM usage.outbox WHERE payload->>'user_id' = :u",
                        u=str(user),
                    )
                )
                and all(x.published_at for x in r)
                and r
            ),
            timeout=60,
            what="the threshold events published",
        )
        assert len(announced) == 2
        # The relay publishes to every queue bound to the type: notify's and webhooks' (no consumer here).
        # (Other tests of this session may have left threshold events of their own users in the outbox.)
        received = [
            event
            for m in drain_queue(url, topology.NOTIFY.name)
            if (event := QuotaThresholdCrossedV1.model_validate(json.loads(m.body)[1]["event"])).user_id
            == user
        ]
        figures.append(
            f"240 deliveries of 120 events crossing 80 % and 100 %: {len(received)} threshold events"
        )
        assert sorted((e.period, e.threshold_percent) for e in received) == [("day", 80), ("day", 100)]
        assert len({e.id for e in received}) == 2
        eighty = next(e for e in received if e.threshold_percent == 80)
        assert eighty.user_id == user
        assert eighty.quota_tokens == 10_000
        assert (
            8_000 <= eighty.used_tokens < 10_000 + 7 * 100
        )  # the batch that reached it, at most 7 events over
        assert eighty.plan == "free"
        webhooks = [json.loads(m.body)[1]["event"] for m in drain_queue(url, topology.WEBHOOKS.name)]
        assert sorted(e["threshold_percent"] for e in webhooks if e["user_id"] == str(user)) == [80, 100]
        published = metric(
            f"http://127.0.0.1:{relay_metrics}/metrics", "parley_outbox_published_total", service="usage"
        )
        assert published >= 2
