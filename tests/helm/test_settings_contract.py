"""The charts give every Python process the settings it needs in production.

For each chart whose service exists in this workspace, the environment of every rendered container
(ConfigMap, Secret placeholders, composed URLs) is handed to the service's real ``Settings`` class in a
fresh interpreter with ``PARLEY_ENV=prod``, which refuses any development default left in place. A
missing or misspelt variable in a chart fails here, not at 3 a.m. in a pod.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from tests.helm.charts import (
    PYTHON_CHARTS,
    REGION_FILES,
    UMBRELLA,
    chart_of,
    container_env,
    containers,
    render,
    workloads,
)

CHECK = r"""
import importlib, json, os, sys
from parley_common.settings import load_settings
results = []
for item in json.load(sys.stdin):
    os.environ.clear()
    os.environ.update(item["env"])
    module, _, name = item["settings"].partition(":")
    try:
        settings = load_settings(getattr(importlib.import_module(module), name))
        results.append({"where": item["where"], "ok": True, "region": settings.region, "env": settings.env})
    except Exception as exc:
        results.append({"where": item["where"], "ok": False, "error": f"{type(exc).__name__}: {exc}"})
print(json.dumps(results))
"""


def built(chart: str) -> bool:
    return importlib.util.find_spec(f"parley_{chart}") is not None and (
        importlib.util.find_spec(f"parley_{chart}.config") is not None
    )


BUILT = [chart for chart in PYTHON_CHARTS if built(chart)]


def settings_class(chart: str, container: dict) -> str:
    # The migration Job's wait reads only what it needs; every other process reads its service's Settings.
    if container.get("command", [])[:3] == ["python", "-m", "parley_common.db.wait"]:
        return "parley_common.db.wait:WaitSettings"
    return f"parley_{chart}.config:Settings"


def test_some_services_exist_to_check() -> None:
    assert {"gateway", "chat", "usage"} <= set(BUILT)


def check(items: list[dict]) -> list[dict]:
    """Load each item's settings in one fresh interpreter; one outcome per item."""
    result = subprocess.run(
        [sys.executable, "-c", CHECK],
        input=json.dumps(items),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    outcomes: list[dict] = json.loads(result.stdout)
    return outcomes


@pytest.fixture(scope="module")
def outcomes() -> dict[tuple[str, str], list[dict]]:
    """(chart, region) -> the outcome of every container of the chart in that region's rendering."""
    items = []
    for region_file in REGION_FILES:
        docs = render(UMBRELLA, files=(region_file,))
        for workload in workloads(docs):
            chart = chart_of(workload)
            if chart not in BUILT:
                continue
            for container in containers(workload):
                items.append({
                    "where": f"{workload['kind']}/{workload['metadata']['name']}/{container['name']}",
                    "key": [chart, region_file.stem],
                    "settings": settings_class(chart, container),
                    "env": container_env(docs, container),
                })  # fmt: skip
    grouped: dict[tuple[str, str], list[dict]] = {}
    for item, outcome in zip(items, check(items), strict=True):
        grouped.setdefault(tuple(item["key"]), []).append(outcome)
    return grouped


@pytest.mark.parametrize("region", [file.stem for file in REGION_FILES])
@pytest.mark.parametrize("chart", BUILT)
def test_every_container_of_the_chart_has_valid_production_settings(
    chart: str, region: str, outcomes: dict[tuple[str, str], list[dict]]
) -> None:
    found = outcomes[(chart, region)]
    assert found
    failures = [f"{o['where']}: {o['error']}" for o in found if not o["ok"]]
    assert not failures, "\n".join(failures)
    assert {(o["region"], o["env"]) for o in found} == {(region, "prod")}


def test_a_missing_setting_is_caught() -> None:
    """The check above is real: drop the database URL and production settings refuse to load."""
    docs = render(UMBRELLA, files=(REGION_FILES[0],))
    (api,) = [w for w in workloads(docs) if w["metadata"]["name"] == "parley-chat-api"]
    env = container_env(docs, containers(api)[0])
    del env["PARLEY_DATABASE_URL"]
    (outcome,) = check([{"where": "chat-api", "settings": "parley_chat.config:Settings", "env": env}])
    assert not outcome["ok"]
    assert "PARLEY_DATABASE_URL" in outcome["error"]
