"""Pods: shutdown grace, beat's single replica, security context, resources, probes, spreading, PDBs."""

from __future__ import annotations

import re

import jmespath
import pytest

from tests.helm.cases import CASES, Case
from tests.helm.charts import (
    component,
    container_env,
    containers,
    kind,
    named,
    pod_spec,
    render,
    workloads,
)

ALL_DOCS = [pytest.param(case, id=case.id) for case in CASES]


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


class TestWorkerShutdown:
    @pytest.mark.parametrize("case", ALL_DOCS)
    def test_worker_grace_period_exceeds_its_task_time_limit(self, case: Case) -> None:
        docs = render(case.chart, case.values, case.files)
        workers = [d for d in kind(docs, "Deployment") if component(d) == "worker"]
        for worker in workers:
            (main,) = containers(worker, init=False)
            limit = int(env_of(main)["PARLEY_TASK_TIME_LIMIT"])
            assert pod_spec(worker)["terminationGracePeriodSeconds"] > limit, worker["metadata"]["name"]

    def test_grace_follows_the_time_limit(self) -> None:
        docs = render("webhooks", {"components": {"worker": {"taskTimeLimitSeconds": 3600}}})
        worker = named(docs, "Deployment", "parley-webhooks-worker")
        assert env_of(containers(worker)[0])["PARLEY_TASK_TIME_LIMIT"] == "3600"
        assert pod_spec(worker)["terminationGracePeriodSeconds"] == 3630

    def test_worker_env_sets_concurrency_and_metrics_port(self) -> None:
        worker = named(render("usage"), "Deployment", "parley-usage-worker")
        env = env_of(containers(worker)[0])
        assert env["PARLEY_WORKER_CONCURRENCY"] == "2"
        assert env["PARLEY_METRICS_PORT"] == str(
            jmespath.search("spec.template.spec.containers[0].ports[0].containerPort", worker)
        )


class TestHttpShutdown:
    @pytest.mark.parametrize("chart", ["gateway", "chat", "usage", "webhooks"])
    def test_pre_stop_and_grace_let_open_streams_finish(self, chart: str) -> None:
        api = named(render(chart), "Deployment", f"parley-{chart}-api")
        (main,) = containers(api)
        env = env_of(main)
        pre_stop = int(main["lifecycle"]["preStop"]["exec"]["command"][1])
        graceful = int(env["PARLEY_HTTP_GRACEFUL_SHUTDOWN"])
        assert pre_stop > 0
        assert pod_spec(api)["terminationGracePeriodSeconds"] > pre_stop + graceful
        assert env["PARLEY_HTTP_HOST"] == "0.0.0.0"
        assert env["PARLEY_HTTP_PORT"] == str(main["ports"][0]["containerPort"])

    def test_streaming_services_allow_long_streams(self) -> None:
        for chart in ("gateway", "chat"):
            api = named(render(chart), "Deployment", f"parley-{chart}-api")
            assert int(env_of(containers(api)[0])["PARLEY_HTTP_GRACEFUL_SHUTDOWN"]) >= 120


class TestBeat:
    @pytest.mark.parametrize("chart", ["usage", "webhooks"])
    def test_beat_is_exactly_one_replica_never_two_at_once(self, chart: str) -> None:
        docs = render(chart, {"global": {"keda": {"enabled": False}}})
        beat = named(docs, "Deployment", f"parley-{chart}-beat")
        assert beat["spec"]["replicas"] == 1
        assert beat["spec"]["strategy"] == {"type": "Recreate"}
        scalers = {
            d["spec"]["scaleTargetRef"]["name"]
            for d in docs
            if d["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")
        }
        assert beat["metadata"]["name"] not in scalers

    def test_beat_replicas_cannot_be_set(self) -> None:
        from tests.helm.charts import render_error

        assert "replicas" in render_error("usage", {"components": {"beat": {"replicas": 2}}})


class TestPodSecurity:
    @pytest.mark.parametrize("case", ALL_DOCS)
    def test_every_pod_is_non_root_read_only_without_capabilities(self, case: Case) -> None:
        docs = render(case.chart, case.values, case.files)
        assert workloads(docs)
        for workload in workloads(docs):
            where = f"{workload['kind']}/{workload['metadata']['name']}"
            spec = pod_spec(workload)
            assert spec["securityContext"]["runAsNonRoot"] is True, where
            assert spec["securityContext"]["runAsUser"] > 0, where
            assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert spec["automountServiceAccountToken"] is False, where
            assert {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}} in spec["volumes"], where
            for container in containers(workload):
                context = container["securityContext"]
                assert context["runAsNonRoot"] is True, where
                assert context["readOnlyRootFilesystem"] is True, where
                assert context["allowPrivilegeEscalation"] is False, where
                assert context["privileged"] is False, where
                assert context["capabilities"] == {"drop": ["ALL"]}, where
                assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"], where

    @pytest.mark.parametrize("case", ALL_DOCS)
    def test_every_container_has_requests_and_limits(self, case: Case) -> None:
        for workload in workloads(render(case.chart, case.values, case.files)):
            for container in containers(workload):
                resources = container["resources"]
                for section in ("requests", "limits"):
                    assert set(resources[section]) == {"cpu", "memory"}, (
                        workload["metadata"]["name"],
                        section,
                    )

    def test_no_secret_objects_and_no_secret_values_in_env(self) -> None:
        from tests.helm.charts import REGION_FILES, UMBRELLA

        for region in REGION_FILES:
            docs = render(UMBRELLA, files=(region,))
            assert not kind(docs, "Secret")
            for workload in workloads(docs):
                for container in containers(workload):
                    for entry in container.get("env", []):
                        if re.search(
                            r"(PASSWORD|API_KEY|PRIVATE_KEYS?|ENCRYPTION_KEYS?|SECRET|TOKEN)$", entry["name"]
                        ):
                            assert "secretKeyRef" in entry.get("valueFrom", {}), entry["name"]
                        if "value" in entry and "://" in entry["value"] and "@" in entry["value"]:
                            credentials = entry["value"].split("://", 1)[1].split("@", 1)[0]
                            assert ":" not in credentials or "$(" in credentials, entry["name"]


class TestProbes:
    @pytest.mark.parametrize("case", ALL_DOCS)
    def test_long_running_containers_have_startup_liveness_and_readiness(self, case: Case) -> None:
        for deployment in kind(render(case.chart, case.values, case.files), "Deployment"):
            (main,) = containers(deployment)
            ports = {port["name"] for port in main["ports"]}
            where = deployment["metadata"]["name"]
            assert main["livenessProbe"]["httpGet"]["path"] == "/livez", where
            assert main["readinessProbe"]["httpGet"]["path"] == "/readyz", where
            assert main["startupProbe"]["httpGet"]["path"] == "/livez", where
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                assert main[probe]["httpGet"]["port"] in ports, where
            # A slow start is the startup probe's business, so liveness can stay strict.
            startup = main["startupProbe"]
            assert startup["periodSeconds"] * startup["failureThreshold"] >= 60, where

    def test_probe_timing_overrides(self) -> None:
        values = {"components": {"api": {"probes": {"startup": {"failureThreshold": 90}}}}}
        api = named(render("chat", values), "Deployment", "parley-chat-api")
        assert containers(api)[0]["startupProbe"]["failureThreshold"] == 90
        assert containers(api)[0]["livenessProbe"]["failureThreshold"] == 3


class TestSpreadAndDisruption:
    @pytest.mark.parametrize("chart", ["gateway", "chat", "usage", "notify", "webhooks", "web"])
    def test_pods_spread_across_zones_and_nodes(self, chart: str) -> None:
        for deployment in kind(render(chart), "Deployment"):
            constraints = pod_spec(deployment)["topologySpreadConstraints"]
            assert [c["topologyKey"] for c in constraints] == [
                "topology.kubernetes.io/zone",
                "kubernetes.io/hostname",
            ]
            for constraint in constraints:
                assert (
                    constraint["labelSelector"]["matchLabels"]
                    == deployment["spec"]["selector"]["matchLabels"]
                )

    @pytest.mark.parametrize("chart", ["gateway", "chat", "usage", "notify", "webhooks", "web"])
    def test_every_scaled_or_replicated_deployment_has_a_pdb(self, chart: str) -> None:
        docs = render(chart)
        pdbs = {d["metadata"]["name"]: d for d in kind(docs, "PodDisruptionBudget")}
        for deployment in kind(docs, "Deployment"):
            name = deployment["metadata"]["name"]
            if component(deployment) == "beat":
                assert name not in pdbs
                continue
            assert pdbs[name]["spec"]["selector"] == deployment["spec"]["selector"]
            assert pdbs[name]["spec"]["maxUnavailable"] == 1


class TestEnvResolves:
    def test_container_env_composes_urls_from_secrets(self) -> None:
        docs = render("usage")
        worker = named(docs, "Deployment", "parley-usage-worker")
        env = container_env(docs, containers(worker)[0])
        assert env["PARLEY_DATABASE_URL"] == (
            "postgresql://parley:secret-parley-postgresql-password@postgresql:5432/parley?sslmode=require"
        )
        assert (
            env["PARLEY_RABBITMQ_URL"]
            == "amqps://parley:secret-parley-rabbitmq-password@rabbitmq:5671/parley"
        )
        assert env["PARLEY_REGION"] == "local"
