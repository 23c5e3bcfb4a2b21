"""Autoscaling: one autoscaler per Deployment; KEDA on the worker's queue counting unacknowledged
messages; an HPA for workers only when KEDA is off; slow scale-down for HTTP services."""

from __future__ import annotations

from collections import Counter

import jmespath
import pytest

from tests.helm.cases import CASES, KEDA_OFF, Case
from tests.helm.charts import REGION_FILES, UMBRELLA, RenderError, chart_of, component, kind, named, render

WORKER_QUEUES = {"gateway": "gateway.events", "usage": "usage.events", "notify": "notify.events",
                 "webhooks": "webhooks.events", "chat": "chat.events"}  # fmt: skip


def targets(docs: list[dict]) -> Counter[str]:
    """Deployment name -> how many autoscalers (HPA or ScaledObject) target it."""
    counts: Counter[str] = Counter()
    for doc in docs:
        if doc["kind"] in ("HorizontalPodAutoscaler", "ScaledObject"):
            assert jmespath.search("spec.scaleTargetRef.kind", doc) == "Deployment"
            counts[jmespath.search("spec.scaleTargetRef.name", doc)] += 1
    return counts


class TestOneAutoscalerPerDeployment:
    @pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
    def test_hpa_and_scaledobject_never_target_the_same_deployment(self, case: Case) -> None:
        docs = render(case.chart, case.values, case.files)
        deployments = {doc["metadata"]["name"] for doc in kind(docs, "Deployment")}
        counts = targets(docs)
        assert set(counts) <= deployments, "an autoscaler targets a Deployment that does not exist"
        assert all(count == 1 for count in counts.values()), counts

    @pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
    def test_autoscaled_deployments_leave_replicas_to_the_autoscaler(self, case: Case) -> None:
        docs = render(case.chart, case.values, case.files)
        scaled = set(targets(docs))
        for deployment in kind(docs, "Deployment"):
            has_replicas = "replicas" in deployment["spec"]
            assert has_replicas != (deployment["metadata"]["name"] in scaled), deployment["metadata"]["name"]

    def test_both_switches_on_still_gives_keda_alone(self) -> None:
        docs = render(
            "usage", {"components": {"worker": {"keda": {"enabled": True}, "autoscaling": {"enabled": True}}}}
        )
        worker = "parley-usage-worker"
        assert [d["metadata"]["name"] for d in kind(docs, "ScaledObject")] == [worker]
        assert worker not in {
            d["spec"]["scaleTargetRef"]["name"] for d in kind(docs, "HorizontalPodAutoscaler")
        }


class TestWorkersWithKeda:
    @pytest.mark.parametrize(("chart", "queue"), WORKER_QUEUES.items())
    def test_scaledobject_reads_ready_plus_unacked_messages_of_the_workers_queue(
        self, chart: str, queue: str
    ) -> None:
        docs = render(chart)
        scaled = named(docs, "ScaledObject", f"parley-{chart}-worker")
        (trigger,) = scaled["spec"]["triggers"]
        assert trigger["type"] == "rabbitmq"
        # Only the management API (protocol http) sees unacknowledged messages; AMQP sees ready ones only.
        assert trigger["metadata"]["protocol"] == "http"
        assert trigger["metadata"]["mode"] == "QueueLength"
        assert trigger["metadata"]["excludeUnacknowledged"] == "false"
        assert trigger["metadata"]["queueName"] == queue
        auth = named(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        assert auth["spec"]["secretTargetRef"] == [
            {"parameter": "host", "name": "parley-rabbitmq", "key": "management-url"}
        ]

    def test_worker_queue_matches_the_queue_the_worker_consumes(self) -> None:
        from parley_common.messaging import topology

        declared = {queue.name.split(".")[0]: queue.name for queue in topology.QUEUES}
        assert set(declared) == set(WORKER_QUEUES)
        for chart, queue in declared.items():
            scaled = named(render(chart), "ScaledObject", f"parley-{chart}-worker")
            assert scaled["spec"]["triggers"][0]["metadata"]["queueName"] == queue

    def test_min_max_and_slow_scale_down(self) -> None:
        scaled = named(render("usage"), "ScaledObject", "parley-usage-worker")
        assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (1, 20)
        behavior = jmespath.search("spec.advanced.horizontalPodAutoscalerConfig.behavior.scaleDown", scaled)
        assert behavior["stabilizationWindowSeconds"] >= 300
        assert behavior["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 60}]

    def test_keda_needs_the_management_secret(self) -> None:
        values = {"global": {"rabbitmq": {"managementSecret": {"name": ""}}}}
        with pytest.raises(RenderError, match="managementSecret.name is required"):
            render("notify", values)


class TestWorkersWithoutKeda:
    @pytest.mark.parametrize("chart", WORKER_QUEUES)
    def test_keda_off_gives_a_cpu_hpa_and_no_keda_objects(self, chart: str) -> None:
        docs = render(chart, KEDA_OFF)
        assert not kind(docs, "ScaledObject")
        assert not kind(docs, "TriggerAuthentication")
        hpa = named(docs, "HorizontalPodAutoscaler", f"parley-{chart}-worker")
        assert jmespath.search("spec.metrics[0].resource.name", hpa) == "cpu"

    def test_keda_and_hpa_off_gives_fixed_replicas(self) -> None:
        values = {**KEDA_OFF, "components": {"worker": {"autoscaling": {"enabled": False}, "replicas": 3}}}
        docs = render("notify", values)
        assert not kind(docs, "HorizontalPodAutoscaler")
        assert named(docs, "Deployment", "parley-notify-worker")["spec"]["replicas"] == 3


class TestHttpAutoscaling:
    @pytest.mark.parametrize("chart", ["gateway", "chat", "usage", "webhooks", "web"])
    def test_cpu_hpa_with_slow_scale_down(self, chart: str) -> None:
        name = f"parley-{chart}-{'web' if chart == 'web' else 'api'}"
        hpa = named(render(chart), "HorizontalPodAutoscaler", name)
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert jmespath.search("spec.metrics[*].resource.name", hpa) == ["cpu"]
        down = hpa["spec"]["behavior"]["scaleDown"]
        assert down["stabilizationWindowSeconds"] >= 300
        assert down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 120}]

    def test_optional_second_metric(self) -> None:
        values = {"components": {"api": {"autoscaling": {
            "targetMemoryUtilizationPercentage": 80,
            "podsMetric": {"name": "parley_http_requests_in_flight", "averageValue": "20"},
        }}}}  # fmt: skip
        hpa = named(render("chat", values), "HorizontalPodAutoscaler", "parley-chat-api")
        assert jmespath.search("spec.metrics[*].type", hpa) == ["Resource", "Resource", "Pods"]
        assert jmespath.search("spec.metrics[2].pods.metric.name", hpa) == "parley_http_requests_in_flight"


class TestRegionsScaleDifferently:
    def test_replica_ranges_differ_between_regions(self) -> None:
        assert len(REGION_FILES) >= 2
        ranges = {}
        for region in REGION_FILES:
            docs = render(UMBRELLA, files=(region,))
            ranges[region.stem] = {
                (chart_of(d), component(d)): (d["spec"].get("minReplicas", d["spec"].get("minReplicaCount")),
                                               d["spec"].get("maxReplicas", d["spec"].get("maxReplicaCount")))
                for d in docs if d["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")
            }  # fmt: skip
        first, *others = ranges.values()
        for other in others:
            assert set(other) == set(first)
            assert other != first
        assert ranges["us-east"][("chat", "api")] == (4, 80)
        assert ranges["eu-west"][("chat", "api")] == (2, 24)


class TestWorkerReliabilitySettings:
    def test_celery_app_takes_one_message_at_a_time_and_acks_late(self) -> None:
        from parley_common.messaging import topology
        from parley_common.messaging.worker import WorkerSettings, create_celery_app

        app = create_celery_app("notify", topology.NOTIFY, WorkerSettings(rabbitmq_url="amqp://u:p@h:5672/v"))
        assert app.conf.worker_prefetch_multiplier == 1
        assert app.conf.task_acks_late is True
        assert app.conf.task_reject_on_worker_lost is True
