"""A Celery worker for the protocol round-trip test: runs one task that appends what it received to a file.

Started by the test as a real process: ``python -m tests.support.echo_worker <amqp-url> <output-file>``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from celery import Task
from parley_common.messaging.topology import ConsumerQueue
from parley_common.messaging.worker import WorkerSettings, create_celery_app, run_worker

ECHO_QUEUE = ConsumerQueue("test.echo", ("test.echo.v1",))


def main() -> None:
    amqp_url, output = sys.argv[1], sys.argv[2]
    settings = WorkerSettings(rabbitmq_url=amqp_url, worker_concurrency=1)  # type: ignore[arg-type]
    app = create_celery_app("echo", ECHO_QUEUE, settings)

    @app.task(name="test.echo.v1", bind=True)  # type: ignore[untyped-decorator]
    def echo(self: Task, **kwargs: Any) -> None:
        record = {
            "task_id": self.request.id,
            "task": self.name,
            "kwargs": kwargs,
            "traceparent": getattr(self.request, "traceparent", None),
        }
        with open(output, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    run_worker(app, settings)


if __name__ == "__main__":
    main()
