"""A Celery worker (Parley's own create_celery_app + event_handler) for the relay-to-Celery test: writes each
event it runs to a file. Started as a real process: ``python -m tests.usage.celery_sink <amqp-url> <file>``."""

from __future__ import annotations

import json
import sys
from typing import Literal

from parley_common.events import Event
from parley_common.messaging.topology import ConsumerQueue
from parley_common.messaging.worker import WorkerSettings, create_celery_app, event_handler, run_worker

SINK_QUEUE = ConsumerQueue("test.sink", ("test.sinked.v1",))


class SinkedV1(Event):
    """A test event."""

    type: Literal["test.sinked.v1"] = "test.sinked.v1"
    n: int


def main() -> None:
    amqp_url, output = sys.argv[1], sys.argv[2]
    settings = WorkerSettings(rabbitmq_url=amqp_url, worker_concurrency=1)  # type: ignore[arg-type]
    app = create_celery_app("sink", SINK_QUEUE, settings)

    @event_handler(app, SinkedV1)
    def sink(event: SinkedV1) -> None:
        with open(output, "a") as handle:
            handle.write(
                json.dumps({"id": str(event.id), "n": event.n, "traceparent": event.traceparent}) + "\n"
            )

    run_worker(app, settings)


if __name__ == "__main__":
    main()
