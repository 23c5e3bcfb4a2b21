"""Reads of a process's Prometheus ``/metrics`` page, for assertions."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


def metric(url: str, name: str, **labels: str) -> float:
    """The value of one sample on a /metrics page (0 when absent)."""
    body = httpx.get(url, timeout=5).text
    total = 0.0
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
