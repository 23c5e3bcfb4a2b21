"""helm lint --strict on every chart, helm template on every case, and strict schema validation of every
rendered document for Kubernetes 1.30; values that break a chart's schema are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helm.cases import CASES, Case
from tests.helm.charts import CHARTS, REGION_FILES, UMBRELLA, lint, render, render_error
from tests.helm.manifests import problems

BROKEN = Path(__file__).parent / "broken-values.yaml"


class TestLint:
    @pytest.mark.parametrize("chart", ["common", *CHARTS])
    def test_chart_lints_strictly_with_its_defaults(self, chart: str) -> None:
        result = lint(chart)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "0 chart(s) failed" in result.stdout

    @pytest.mark.parametrize("region", REGION_FILES, ids=lambda path: path.stem)
    def test_umbrella_lints_strictly_with_each_region(self, region: Path) -> None:
        result = lint(UMBRELLA, [region])
        assert result.returncode == 0, result.stdout + result.stderr


class TestRenderedManifests:
    @pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
    def test_every_document_validates_strictly_for_kubernetes_1_30(self, case: Case) -> None:
        docs = render(case.chart, case.values, case.files)
        assert docs, "nothing rendered"
        found = [problem for doc in docs for problem in problems(doc)]
        assert not found, "\n".join(found)

    def test_umbrella_renders_every_service(self) -> None:
        names = {doc["metadata"]["labels"]["app.kubernetes.io/name"] for doc in render(UMBRELLA)}
        assert names >= {"gateway", "chat", "usage", "notify", "webhooks", "web"}


class TestValidatorIsStrict:
    """The validator itself must refuse what the charts must never render."""

    def test_unknown_field_in_a_core_kind_fails(self) -> None:
        deployment = next(doc for doc in render("chat") if doc["kind"] == "Deployment")
        deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
        assert any("imagePullPolicyy" in problem for problem in problems(deployment))

    def test_removed_api_version_fails(self) -> None:
        hpa = next(doc for doc in render("chat") if doc["kind"] == "HorizontalPodAutoscaler")
        hpa["apiVersion"] = "autoscaling/v2beta2"  # removed in Kubernetes 1.26
        assert problems(hpa) == [
            (
                "HorizontalPodAutoscaler/parley-chat-api (autoscaling/v2beta2): "
                "no schema for this kind/apiVersion in Kubernetes 1.30.0"
            )
        ]

    def test_unknown_kind_fails(self) -> None:
        doc = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {}}
        assert problems(doc)

    def test_unknown_field_in_a_keda_kind_fails(self) -> None:
        scaled = next(doc for doc in render("usage") if doc["kind"] == "ScaledObject")
        assert problems(scaled) == []
        scaled["spec"]["maxReplicas"] = 5  # the field is maxReplicaCount
        assert any("maxReplicas" in problem for problem in problems(scaled))
        auth = next(doc for doc in render("usage") if doc["kind"] == "TriggerAuthentication")
        auth["spec"]["secretTargetRef"][0]["secret"] = "x"
        assert any("secret" in problem for problem in problems(auth))

    def test_wrong_type_in_a_service_monitor_fails(self) -> None:
        docs = render("chat", {"global": {"serviceMonitor": {"enabled": True}}})
        monitor = next(doc for doc in docs if doc["kind"] == "ServiceMonitor")
        assert problems(monitor) == []
        monitor["spec"]["endpoints"] = {"port": "http"}
        assert problems(monitor)


class TestValuesSchema:
    def test_broken_values_file_is_refused_by_the_umbrella_schema(self) -> None:
        error = render_error(UMBRELLA, files=[BROKEN])
        assert "values don't meet the specifications of the schema" in error
        # One refusal per mistake in the file, each named.
        assert "regoin" in error  # misspelt global key
        assert "maxReplica" in error  # misspelt autoscaling key in a subchart
        assert "queueLength" in error  # wrong type
        assert "sslmode" in error  # not one of the allowed values

    @pytest.mark.parametrize(
        ("chart", "values", "expected"),
        [
            ("chat", {"components": {"api": {"replica": 3}}}, "replica"),
            ("usage", {"components": {"worker": {"taskTimeLimitSeconds": "300"}}}, "taskTimeLimitSeconds"),
            ("usage", {"components": {"worker": {"resources": {"requests": {"memory": None}}}}}, "memory"),
            ("notify", {"components": {"sender": {"enabled": True}}}, "sender"),
            ("gateway", {"global": {"region": "EU West"}}, "region"),
            ("gateway", {"global": {"commonLabels": {"app.kubernetes.io/name": "x"}}}, "commonLabels"),
            ("web", {"secretEnv": {"lower_case": {"name": "s", "key": "k"}}}, "secretEnv"),
        ],
    )
    def test_chart_schema_refuses_bad_values(self, chart: str, values: dict, expected: str) -> None:
        error = render_error(chart, values)
        assert "values don't meet the specifications of the schema" in error
        assert expected in error
