"""The one description of Parley's RabbitMQ topology, used by publishers and consumers alike.

Events go to the topic exchange ``parley.events`` with the event type as routing key. Each consuming
service has one quorum queue bound to the types it handles, with an explicit delivery limit: a message
returned more often than that (a crashing handler, a worker killed again and again) is dead-lettered to
``<queue>.dlq`` through ``parley.events.dlx`` instead of looping forever. Dead-lettering is
at-least-once, so a message is never lost between the queue and its DLQ.

Both the relay (aio-pika) and the Celery workers (kombu) declare from this module, so their arguments can
never disagree (RabbitMQ refuses a redeclaration with different arguments).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

EXCHANGE = "parley.events"
DEAD_LETTER_EXCHANGE = "parley.events.dlx"


@dataclass(frozen=True)
class ConsumerQueue:
    """One consumer's queue: its name, the event types it receives, and its failure budget."""

    name: str
    event_types: tuple[str, ...]
    delivery_limit: int = 5
    extra_arguments: dict[str, Any] = field(default_factory=dict)

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.name}.dlq"

    def arguments(self) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": self.delivery_limit,
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            "x-dead-letter-routing-key": self.name,
            # at-least-once dead-lettering requires reject-publish overflow (RabbitMQ docs, quorum queues).
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
            **self.extra_arguments,
        }

    @staticmethod
    def dead_letter_arguments() -> dict[str, Any]:
        return {"x-queue-type": "quorum"}


USAGE = ConsumerQueue("usage.events", ("usage.tokens_consumed.v1",))
NOTIFY = ConsumerQueue(
    "notify.events",
    (
        "user.registered.v1",
        "user.deleted.v1",
        "quota.threshold_crossed.v1",
        "plan.changed.v1",
        "webhooks.endpoint_disabled.v1",
    ),
)
WEBHOOKS = ConsumerQueue(
    "webhooks.events",
    (
        "conversation.message_completed.v1",
        "quota.threshold_crossed.v1",
        "plan.changed.v1",
        "webhooks.endpoint_disabled.v1",
        "user.deleted.v1",
    ),
)
GATEWAY = ConsumerQueue("gateway.events", ("plan.changed.v1",))
# Chat's erasure of deleted accounts (consumed inside the chat API process: see parley_chat.erasure).
CHAT = ConsumerQueue("chat.events", ("user.deleted.v1",))

QUEUES: tuple[ConsumerQueue, ...] = (USAGE, NOTIFY, WEBHOOKS, GATEWAY, CHAT)

# Scheduled jobs of parley-usage-beat (Celery beat publishes them, its embedded worker runs them). Not an
# event queue, so not in QUEUES: relays don't declare it, and no event type is routed to it.
USAGE_MAINTENANCE = ConsumerQueue(
    "usage.maintenance",
    ("usage.maintain_partitions", "usage.reconcile_quotas", "usage.check_quota_seed", "usage.measure_drift"),
)


def queues_for(event_type: str) -> list[ConsumerQueue]:
    """The queues an event of ``event_type`` is routed to."""
    return [queue for queue in QUEUES if event_type in queue.event_types]


async def declare(channel: Any, queues: tuple[ConsumerQueue, ...] = QUEUES) -> Any:
    """Declare exchanges, queues, dead-letter queues and bindings with aio-pika; returns the exchange."""
    import aio_pika

    exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    dlx = await channel.declare_exchange(DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True)
    for queue in queues:
        dlq = await channel.declare_queue(
            queue.dead_letter_queue, durable=True, arguments=ConsumerQueue.dead_letter_arguments()
        )
        await dlq.bind(dlx, routing_key=queue.name)
        declared = await channel.declare_queue(queue.name, durable=True, arguments=queue.arguments())
        for event_type in queue.event_types:
            await declared.bind(exchange, routing_key=event_type)
    return exchange
