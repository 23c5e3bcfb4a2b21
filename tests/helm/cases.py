"""The renderings every check runs over: each chart's defaults, each region, KEDA on/off, PgBouncer, and
the optional features all switched on (so their templates are validated too) and all switched off."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helm.charts import REGION_FILES, SERVICE_CHARTS, UMBRELLA


@dataclass(frozen=True)
class Case:
    id: str
    chart: str
    values: dict[str, Any] = field(default_factory=dict)
    files: tuple[Path, ...] = ()


EVERYTHING_ON: dict[str, Any] = {
    "global": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "otel": {"exporter": "otlp", "endpoint": "http://otel-collector.monitoring.svc:4318/v1/traces"},
        "commonLabels": {"team": "platform"},
        "imagePullSecrets": ["registry-credentials"],
        "priorityClassName": "parley-high",
        "database": {"readReplica": {"host": "pg-replica.internal"}},
        "cacheRedis": {
            "host": "cache.internal",
            "passwordSecret": {"name": "parley-cache", "key": "password"},
        },
    },
    "chat": {
        "image": {"digest": "sha256:" + "a" * 64},
        "components": {
            "api": {
                "autoscaling": {
                    "targetMemoryUtilizationPercentage": 80,
                    "podsMetric": {"name": "parley_http_requests_in_flight", "averageValue": "20"},
                },
                "podLabels": {"tier": "api"},
                "podAnnotations": {"example.com/owner": "chat"},
                "tolerations": [
                    {"key": "dedicated", "operator": "Equal", "value": "parley", "effect": "NoSchedule"}
                ],
                "nodeSelector": {"kubernetes.io/os": "linux"},
                "probes": {"startup": {"failureThreshold": 90}, "readiness": {"initialDelaySeconds": 2}},
                "networkPolicy": {"extraFrom": [{"podSelector": {"matchLabels": {"app": "debug"}}}]},
            }
        },
    },
    "usage": {"components": {"worker": {"keda": {"fallbackReplicas": 2, "minReplicas": 0}}}},
}

EVERYTHING_OFF: dict[str, Any] = {
    "global": {
        "keda": {"enabled": False},
        "networkPolicy": {"enabled": False},
        "topologySpread": {"enabled": False},
        "database": {"passwordSecret": {"name": ""}},
        "redis": {"passwordSecret": {"name": ""}, "scheme": "redis"},
        "rabbitmq": {"passwordSecret": {"name": ""}, "scheme": "amqp", "port": 5672},
    },
    **{
        chart: {"components": {"api": {"autoscaling": {"enabled": False}, "pdb": {"enabled": False}}}}
        for chart in ("gateway", "chat", "usage", "webhooks")
    },
    "notify": {
        "migrations": {"enabled": False},
        "components": {"worker": {"autoscaling": {"enabled": False}}},
    },
    "web": {"enabled": False},
}

KEDA_OFF = {"global": {"keda": {"enabled": False}}}
PGBOUNCER = {"global": {"database": {"pgbouncer": {"enabled": True, "host": "pgbouncer.parley.svc"}}}}

CASES: tuple[Case, ...] = (
    *(Case(f"{chart}-defaults", chart) for chart in SERVICE_CHARTS),
    Case("parley-defaults", UMBRELLA),
    *(Case(f"parley-{file.stem}", UMBRELLA, files=(file,)) for file in REGION_FILES),
    Case("parley-keda-off", UMBRELLA, KEDA_OFF),
    *(Case(f"{chart}-keda-off", chart, KEDA_OFF) for chart in ("gateway", "usage", "notify", "webhooks")),
    Case("parley-pgbouncer", UMBRELLA, PGBOUNCER),
    Case("parley-everything-on", UMBRELLA, EVERYTHING_ON),
    Case("parley-everything-off", UMBRELLA, EVERYTHING_OFF),
)
