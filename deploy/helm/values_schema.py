"""Write every Parley chart's ``values.schema.json`` from one definition.

Helm validates a chart's values against its ``values.schema.json`` on install, upgrade, lint and
template, and it cannot follow a ``$ref`` to another file, so each chart needs a complete schema. They
are generated here so the shared parts (global settings, the kinds of components) are written once.
Every object is closed (``additionalProperties: false``): a misspelt key fails the release instead of
being ignored.

A chart's components are read from its templates: ``templates/<name>.yaml`` containing
``include "common.component.<kind>" (dict "root" . "name" "<name>")``.

    uv run python deploy/helm/values_schema.py          # rewrite the files
    uv run python deploy/helm/values_schema.py --check  # exit 1 when a file is out of date
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

HELM_DIR = Path(__file__).resolve().parent
SERVICE_CHARTS = ("gateway", "chat", "usage", "notify", "webhooks", "web")
UMBRELLA = "parley"
_COMPONENT_INCLUDE = re.compile(
    r'include\s+"common\.component\.(?P<kind>\w+)"\s+\(dict\s+"root"\s+\.\s+"name"\s+"(?P<name>[\w-]+)"\)'
)
_ENV_NAME = "^[A-Z_][A-Z0-9_]*$"
_DNS_LABEL = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_QUANTITY = {"type": ["string", "number"], "pattern": r"^[0-9.]+(m|Ki|Mi|Gi|Ti|k|M|G|T)?$"}


def obj(
    properties: dict[str, Any], *, required: list[str] | None = None, description: str = ""
) -> dict[str, Any]:
    """A closed object schema."""
    schema: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": properties}
    if required:
        schema["required"] = required
    if description:
        schema["description"] = description
    return schema


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/definitions/{name}"}


def integer(minimum: int = 0, maximum: int | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer", "minimum": minimum}
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


STRING = {"type": "string"}
BOOL = {"type": "boolean"}
STRING_LIST = {"type": "array", "items": STRING}
FREE_OBJECT = {"type": "object"}  # Kubernetes objects passed through; the rendered manifest is validated


def definitions() -> dict[str, Any]:
    secret_ref = obj(
        {"name": STRING, "key": {"type": "string", "minLength": 1}, "optional": BOOL},
        required=["name", "key"],
        description="A key of an existing Secret",
    )
    resources = obj(
        {
            "requests": obj({"cpu": _QUANTITY, "memory": _QUANTITY}, required=["cpu", "memory"]),
            "limits": obj({"cpu": _QUANTITY, "memory": _QUANTITY}, required=["cpu", "memory"]),
        },
        required=["requests", "limits"],
        description="Requests and limits are both required",
    )
    probe = obj(
        {
            "periodSeconds": integer(1),
            "timeoutSeconds": integer(1),
            "failureThreshold": integer(1),
            "initialDelaySeconds": integer(0),
        }
    )
    probes = obj({"startup": probe, "liveness": probe, "readiness": probe})
    pod_options = {
        "env": {
            "type": "object",
            "propertyNames": {"pattern": _ENV_NAME},
            "additionalProperties": {"type": ["string", "number", "boolean"]},
        },
        "podLabels": {"type": "object", "additionalProperties": STRING},
        "podAnnotations": {"type": "object", "additionalProperties": STRING},
        "nodeSelector": {"type": "object", "additionalProperties": STRING},
        "tolerations": {"type": "array", "items": FREE_OBJECT},
        "affinity": FREE_OBJECT,
        "resources": ref("resources"),
    }
    process = {
        "enabled": BOOL,
        "command": {**STRING_LIST, "minItems": 1},
        "args": STRING_LIST,
        "probes": ref("probes"),
        "networkPolicy": ref("networkPolicy"),
        **pod_options,
    }
    pods_metric = obj({"name": STRING, "averageValue": {"type": ["string", "number"]}})
    hpa = obj(
        {
            "enabled": BOOL,
            "minReplicas": integer(1),
            "maxReplicas": integer(1),
            "targetCPUUtilizationPercentage": integer(1, 100),
            "targetMemoryUtilizationPercentage": {"type": ["integer", "null"], "minimum": 1, "maximum": 100},
            "podsMetric": pods_metric,
            "scaleDownStabilizationSeconds": integer(0, 3600),
            "scaleDownPeriodSeconds": integer(1, 1800),
        },
        required=["enabled", "minReplicas", "maxReplicas", "targetCPUUtilizationPercentage"],
    )
    keda = obj(
        {
            "enabled": BOOL,
            "minReplicas": integer(0),
            "maxReplicas": integer(1),
            "queueLength": integer(1),
            "activationQueueLength": integer(0),
            "pollingInterval": integer(1),
            "cooldownPeriod": integer(0),
            "scaleDownStabilizationSeconds": integer(0, 3600),
            "fallbackReplicas": integer(0),
        },
        required=["enabled", "minReplicas", "maxReplicas", "queueLength"],
    )
    pdb = obj({"enabled": BOOL, "maxUnavailable": {"type": ["integer", "string"]}}, required=["enabled"])
    network_policy = obj(
        {
            "public": BOOL,
            "allowFrom": {
                "type": "array",
                "items": obj(
                    {"chart": {"type": "string", "pattern": _DNS_LABEL}, "component": STRING},
                    required=["chart", "component"],
                ),
            },
            "extraFrom": {"type": "array", "items": FREE_OBJECT},
        }
    )
    http = obj(
        {
            **process,
            # Empty runs the image's own command (nginx in the web image).
            "command": STRING_LIST,
            "port": integer(1024, 65535),
            "replicas": integer(1),
            "http": obj(
                {
                    "workers": integer(1),
                    "gracefulShutdownSeconds": integer(0),
                    "preStopSeconds": integer(0, 120),
                    "shutdownMarginSeconds": integer(1),
                },
                required=["workers", "gracefulShutdownSeconds", "preStopSeconds", "shutdownMarginSeconds"],
            ),
            "autoscaling": hpa,
            "pdb": pdb,
        },
        required=["enabled", "port", "replicas", "http", "autoscaling", "pdb", "resources"],
        description="An HTTP process (uvicorn API, or nginx for the web UI)",
    )
    worker = obj(
        {
            **process,
            "queue": {"type": "string", "minLength": 1},
            "concurrency": integer(1),
            "taskTimeLimitSeconds": integer(1),
            "shutdownMarginSeconds": integer(1),
            "replicas": integer(1),
            "keda": keda,
            "autoscaling": hpa,
            "pdb": pdb,
        },
        required=[
            "enabled",
            "command",
            "queue",
            "concurrency",
            "taskTimeLimitSeconds",
            "shutdownMarginSeconds",
            "replicas",
            "keda",
            "autoscaling",
            "pdb",
            "resources",
        ],
        description="A Celery worker consuming one queue",
    )
    beat = obj(
        {**process},
        required=["enabled", "command", "resources"],
        description="Celery beat: always exactly one replica",
    )
    relay = obj(
        {**process, "replicas": integer(1), "pdb": pdb},
        required=["enabled", "command", "replicas", "pdb", "resources"],
        description="An outbox relay",
    )
    migrations = obj(
        {
            "enabled": BOOL,
            "command": {**STRING_LIST, "minItems": 1},
            "args": STRING_LIST,
            "waitTimeoutSeconds": integer(1),
            "activeDeadlineSeconds": integer(60),
            "backoffLimit": integer(0, 10),
            **pod_options,
        },
        required=[
            "enabled",
            "command",
            "waitTimeoutSeconds",
            "activeDeadlineSeconds",
            "backoffLimit",
            "resources",
        ],
    )
    redis = obj(
        {
            "scheme": {"enum": ["redis", "rediss"]},
            "host": STRING,
            "port": integer(1, 65535),
            "db": integer(0),
            "keyPrefix": STRING,
            "passwordSecret": ref("secretRef"),
        },
        required=["scheme", "host", "port", "db", "passwordSecret"],
    )
    global_ = obj(
        {
            "region": {"type": "string", "pattern": _DNS_LABEL, "maxLength": 63},
            "env": {"enum": ["dev", "test", "prod"]},
            "logLevel": {"enum": ["DEBUG", "INFO", "WARNING", "ERROR"]},
            "logFormat": {"enum": ["json", "console"]},
            "otel": obj({"exporter": {"enum": ["none", "console", "otlp"]}, "endpoint": STRING}),
            "image": obj(
                {
                    "registry": {"type": "string", "minLength": 1},
                    "tag": STRING,
                    "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
                }
            ),
            "imagePullSecrets": STRING_LIST,
            "priorityClassName": STRING,
            "commonLabels": {
                "type": "object",
                "additionalProperties": STRING,
                "propertyNames": {"not": {"pattern": r"^(app\.kubernetes\.io|helm\.sh|parley\.dev)/"}},
            },
            "tmpSizeLimit": _QUANTITY,
            "metricsPort": integer(1024, 65535),
            "topologySpread": obj(
                {
                    "enabled": BOOL,
                    "maxSkew": integer(1),
                    "whenUnsatisfiable": {"enum": ["ScheduleAnyway", "DoNotSchedule"]},
                }
            ),
            "keda": obj({"enabled": BOOL}),
            "serviceMonitor": obj(
                {
                    "enabled": BOOL,
                    "interval": STRING,
                    "scrapeTimeout": STRING,
                    "labels": {"type": "object", "additionalProperties": STRING},
                }
            ),
            "networkPolicy": obj(
                {
                    "enabled": BOOL,
                    "ingressControllerPeers": {"type": "array", "items": FREE_OBJECT},
                    "metricsPeers": {"type": "array", "items": FREE_OBJECT},
                }
            ),
            "serviceUrls": obj(dict.fromkeys(("gateway", "chat", "usage", "webhooks"), STRING)),
            "database": obj(
                {
                    "host": STRING,
                    "port": integer(1, 65535),
                    "name": {"type": "string", "minLength": 1},
                    "user": {"type": "string", "minLength": 1},
                    "sslmode": {
                        "enum": ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
                    },
                    "passwordSecret": ref("secretRef"),
                    "readReplica": obj({"host": STRING, "port": integer(1, 65535)}),
                    "pgbouncer": obj(
                        {
                            "enabled": BOOL,
                            "host": STRING,
                            "port": integer(1, 65535),
                            "migrationsThroughPgbouncer": BOOL,
                        }
                    ),
                },
                required=["host", "port", "name", "user", "sslmode", "passwordSecret"],
            ),
            "redis": redis,
            "cacheRedis": redis,
            "rabbitmq": obj(
                {
                    "scheme": {"enum": ["amqp", "amqps"]},
                    "host": STRING,
                    "port": integer(1, 65535),
                    "vhost": {"type": "string", "minLength": 1},
                    "user": {"type": "string", "minLength": 1},
                    "passwordSecret": ref("secretRef"),
                    "managementSecret": ref("secretRef"),
                },
                required=["scheme", "host", "port", "vhost", "user", "passwordSecret", "managementSecret"],
            ),
        },
        description="Settings shared by every Parley chart (see the parley umbrella chart's values.yaml)",
    )
    return {
        "secretRef": secret_ref,
        "resources": resources,
        "probes": probes,
        "networkPolicy": network_policy,
        "http": http,
        "worker": worker,
        "beat": beat,
        "relay": relay,
        "migrations": migrations,
        "global": global_,
    }


def chart_components(chart: str) -> dict[str, str]:
    """``{component name: kind}`` from the chart's one-line templates."""
    found: dict[str, str] = {}
    for template in sorted((HELM_DIR / chart / "templates").glob("*.yaml")):
        for match in _COMPONENT_INCLUDE.finditer(template.read_text()):
            found[match["name"]] = match["kind"]
    return found


def chart_has_migrations(chart: str) -> bool:
    return any(
        'include "common.migrations"' in t.read_text()
        for t in (HELM_DIR / chart / "templates").glob("*.yaml")
    )


def service_chart_schema(chart: str) -> dict[str, Any]:
    components = chart_components(chart)
    properties: dict[str, Any] = {
        "enabled": {"type": "boolean", "description": "Condition used by the parley umbrella chart"},
        "global": ref("global"),
        # Helm adds an entry for every dependency, the library chart included (it has no values).
        "common": {"type": "object"},
        "image": obj({"repository": STRING, "tag": STRING, "digest": STRING}),
        "securityContext": obj(
            {"runAsUser": integer(1), "runAsGroup": integer(1)}, required=["runAsUser", "runAsGroup"]
        ),
        "config": {
            "type": "object",
            "description": "Extra plain settings (PARLEY_*) for every process of the chart",
            "propertyNames": {"pattern": _ENV_NAME},
            "additionalProperties": {"type": ["string", "number", "boolean"]},
        },
        "secretEnv": {
            "type": "object",
            "description": "Environment variables read from existing Secrets",
            "propertyNames": {"pattern": _ENV_NAME},
            "additionalProperties": ref("secretRef"),
        },
        "components": obj(
            {name: ref(kind) for name, kind in components.items()}, required=sorted(components)
        ),
    }
    required = ["global", "image", "securityContext", "components"]
    if chart_has_migrations(chart):
        properties["migrations"] = ref("migrations")
        required.append("migrations")
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": f"Values of the Parley {chart} chart",
        **obj(properties, required=required),
        "definitions": definitions(),
    }


def umbrella_schema() -> dict[str, Any]:
    # Each subchart's block is checked by that subchart's own schema; here only its presence and type.
    properties: dict[str, Any] = {"global": ref("global")}
    for chart in SERVICE_CHARTS:
        properties[chart] = {"type": "object", "description": f"Values of the {chart} chart"}
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "Values of the Parley umbrella chart (one region)",
        **obj(properties, required=["global"]),
        "definitions": {"global": definitions()["global"], "secretRef": definitions()["secretRef"]},
    }


def rendered() -> dict[Path, str]:
    files = {HELM_DIR / chart / "values.schema.json": service_chart_schema(chart) for chart in SERVICE_CHARTS}
    files[HELM_DIR / UMBRELLA / "values.schema.json"] = umbrella_schema()
    return {path: json.dumps(schema, indent=2) + "\n" for path, schema in files.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail when a committed schema is out of date")
    args = parser.parse_args()
    stale = []
    for path, text in rendered().items():
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path)
        if not args.check:
            path.write_text(text)
    if args.check and stale:
        names = " ".join(map(str, stale))
        sys.stderr.write(f"out of date (run: uv run python deploy/helm/values_schema.py): {names}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
