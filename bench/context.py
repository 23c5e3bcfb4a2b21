"""What a benchmark gets: isolated real resources, a process manager, and a place for its numbers.

Benchmarks aim only at loopback, are bounded in count and time, and stop every process they started.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parley_common.db.admin import drop_database
from parley_common.db.migrations import registered
from parley_common.testing import rabbitmq, resources
from parley_common.testing.processes import ProcessManager
from parley_common.testing.services import TestServices, discover

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg(),
    }


@dataclass
class BenchContext:
    name: str
    services: TestServices
    database_url: str
    amqp_url: str
    redis_url: str
    redis_prefix: str
    processes: ProcessManager
    notes: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, name: str) -> BenchContext:
        services = discover()
        tag = resources.new_tag("b")
        resources.drop_stale_databases(services.database_url)
        resources.drop_stale_vhosts()
        database_url = resources.create_database(services.database_url, tag, registered())
        amqp_url = rabbitmq.create_vhost(services.rabbitmq_url, tag)
        logs = ROOT / ".bench" / "logs" / name
        logs.mkdir(parents=True, exist_ok=True)
        return cls(
            name, services, database_url, amqp_url, services.redis_url, f"{tag}:", ProcessManager(logs)
        )

    def close(self) -> None:
        self.processes.stop_all()
        drop_database(self.database_url)
        rabbitmq.delete_vhost(self.amqp_url.rsplit("/", 1)[-1])
        resources.delete_redis_prefix(self.redis_url, self.redis_prefix)


def write_results(name: str, results: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **results}, indent=2, sort_keys=True) + "\n")
    return path
