"""NetworkPolicies admit only the expected callers; each region file reaches every process."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.helm.charts import (
    PYTHON_CHARTS,
    REGION_FILES,
    UMBRELLA,
    chart_of,
    component,
    container_env,
    containers,
    kind,
    load_yaml,
    named,
    render,
    workloads,
)

INGRESS_CONTROLLER = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
METRICS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}


def peer(chart: str, comp: str) -> dict:
    labels = {
        "app.kubernetes.io/name": chart,
        "app.kubernetes.io/component": comp,
        "app.kubernetes.io/part-of": "parley",
    }
    return {"podSelector": {"matchLabels": labels}}


# Who may call whom: the public doors, the gateway in front of the services, the services fetching the
# gateway's JWKS, and the metrics scrapers everywhere.
EXPECTED_CALLERS = {
    ("gateway", "api"): [
        peer("chat", "api"),
        peer("usage", "api"),
        peer("webhooks", "api"),
        INGRESS_CONTROLLER,
        METRICS,
    ],
    ("chat", "api"): [peer("gateway", "api"), METRICS],
    ("usage", "api"): [peer("gateway", "api"), METRICS],
    ("webhooks", "api"): [peer("gateway", "api"), METRICS],
    ("web", "web"): [INGRESS_CONTROLLER, METRICS],
}


class TestNetworkPolicies:
    def test_each_component_admits_only_its_callers_on_its_port(self) -> None:
        docs = render(UMBRELLA)
        deployments = {d["metadata"]["name"]: d for d in kind(docs, "Deployment")}
        policies = {d["metadata"]["name"]: d for d in kind(docs, "NetworkPolicy")}
        assert set(policies) == set(deployments)
        for name, policy in policies.items():
            deployment = deployments[name]
            assert (
                policy["spec"]["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
            )
            assert policy["spec"]["policyTypes"] == ["Ingress"]
            (rule,) = policy["spec"]["ingress"]
            (port,) = containers(deployment)[0]["ports"]
            assert rule["ports"] == [{"port": port["containerPort"], "protocol": "TCP"}]
            expected = EXPECTED_CALLERS.get((chart_of(deployment), component(deployment)), [METRICS])
            assert rule["from"] == expected, name

    def test_disabled_means_none(self) -> None:
        assert not kind(render(UMBRELLA, {"global": {"networkPolicy": {"enabled": False}}}), "NetworkPolicy")


class TestRegions:
    @pytest.mark.parametrize("region_file", REGION_FILES, ids=lambda path: path.stem)
    def test_region_reaches_every_process_and_every_object(self, region_file: Path) -> None:
        region_values = load_yaml(region_file)["global"]
        region = region_values["region"]
        assert region_file.stem == region
        docs = render(UMBRELLA, files=(region_file,))
        for doc in docs:
            assert doc["metadata"]["labels"]["parley.dev/region"] == region
        for workload in workloads(docs):
            if chart_of(workload) == "web":
                continue
            for container in containers(workload):
                env = container_env(docs, container)
                where = f"{workload['metadata']['name']}/{container['name']}"
                assert env["PARLEY_REGION"] == region, where
                assert env["PARLEY_ENV"] == "prod", where
                database = urlsplit(env["PARLEY_DATABASE_URL"]).hostname
                direct = region_values["database"]["host"]
                bouncer = region_values["database"].get("pgbouncer", {})
                allowed = {direct, bouncer.get("host")} if workload["kind"] != "Job" else {direct}
                assert database in allowed, where
                assert urlsplit(env["PARLEY_RABBITMQ_URL"]).hostname == region_values["rabbitmq"]["host"], (
                    where
                )
                if chart_of(workload) != "notify":
                    assert urlsplit(env["PARLEY_REDIS_URL"]).hostname == region_values["redis"]["host"], where

    def test_regions_differ_in_their_managed_services(self) -> None:
        hosts = [load_yaml(file)["global"] for file in REGION_FILES]
        for key in ("database", "redis", "rabbitmq"):
            assert len({h[key]["host"] for h in hosts}) == len(REGION_FILES), key

    def test_us_east_routes_through_pgbouncer_and_eu_west_does_not(self) -> None:
        by_region = {file.stem: render(UMBRELLA, files=(file,)) for file in REGION_FILES}
        for region, through_bouncer in (("us-east", True), ("eu-west", False)):
            docs = by_region[region]
            api = named(docs, "Deployment", "parley-chat-api")
            url = container_env(docs, containers(api)[0])["PARLEY_DATABASE_URL"]
            assert (":6432/" in url) is through_bouncer

    def test_services_find_the_gateway_and_each_other_in_the_release(self) -> None:
        docs = render(UMBRELLA, files=(REGION_FILES[0],))
        chat = named(docs, "Deployment", "parley-chat-api")
        assert container_env(docs, containers(chat)[0])["PARLEY_INTERNAL_JWKS_URL"] == (
            "http://parley-gateway-api.parley.svc/.well-known/jwks.json"
        )
        gateway_env = container_env(docs, containers(named(docs, "Deployment", "parley-gateway-api"))[0])
        services = {d["metadata"]["name"] for d in kind(docs, "Service")}
        for upstream in ("chat", "usage", "webhooks"):
            host = urlsplit(gateway_env[f"PARLEY_{upstream.upper()}_URL"]).hostname
            assert host == f"parley-{upstream}-api.parley.svc"
            assert f"parley-{upstream}-api" in services

    def test_every_python_chart_is_in_the_umbrella(self) -> None:
        charts = {chart_of(d) for d in workloads(render(UMBRELLA))}
        assert set(PYTHON_CHARTS) <= charts


class TestMetricsScraping:
    def test_service_monitors_cover_every_parley_process_but_not_nginx(self) -> None:
        docs = render(UMBRELLA, {"global": {"serviceMonitor": {"enabled": True}}})
        monitors = {d["metadata"]["name"]: d for d in kind(docs, "ServiceMonitor")}
        services = kind(docs, "Service")
        for deployment in kind(docs, "Deployment"):
            name = deployment["metadata"]["name"]
            annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
            if chart_of(deployment) == "web":
                assert name not in monitors
                assert "prometheus.io/scrape" not in annotations
                continue
            assert annotations["prometheus.io/scrape"] == "true"
            monitor = monitors[name]
            port = monitor["spec"]["endpoints"][0]["port"]
            (service,) = [
                s for s in services
                if s["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
                and monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
            ]  # fmt: skip
            assert port in {p["name"] for p in service["spec"]["ports"]}
            assert port in {p["name"] for p in containers(deployment)[0]["ports"]}
