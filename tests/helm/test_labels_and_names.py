"""Selectors hold only name/instance/component, never custom labels; names fit 63 characters."""

from __future__ import annotations

import re

import pytest

from tests.helm.cases import CASES, EVERYTHING_ON, Case
from tests.helm.charts import UMBRELLA, kind, pod_spec, render

SELECTOR_KEYS = {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component"}
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def selectors(docs: list[dict]) -> list[tuple[str, dict]]:
    found = []
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        spec = doc.get("spec", {})
        if doc["kind"] in ("Deployment", "PodDisruptionBudget", "ServiceMonitor"):
            found.append((where, spec["selector"]["matchLabels"]))
        elif doc["kind"] == "Service":
            found.append((where, spec["selector"]))
        elif doc["kind"] == "NetworkPolicy":
            found.append((where, spec["podSelector"]["matchLabels"]))
        if doc["kind"] in ("Deployment", "Job"):
            for constraint in pod_spec(doc).get("topologySpreadConstraints", []):
                found.append((where + " spread", constraint["labelSelector"]["matchLabels"]))
    return found


class TestSelectors:
    @pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
    def test_selectors_hold_only_the_standard_keys(self, case: Case) -> None:
        for where, selector in selectors(render(case.chart, case.values, case.files)):
            assert set(selector) == SELECTOR_KEYS, where

    def test_custom_labels_reach_metadata_but_never_selectors(self) -> None:
        plain = render(UMBRELLA)
        custom = render(UMBRELLA, {
            "global": {"commonLabels": EVERYTHING_ON["global"]["commonLabels"]},
            "chat": {"components": {"api": {"podLabels": {"tier": "api"}}}},
        })  # fmt: skip
        assert selectors(custom) == selectors(plain)
        chat_api = next(d for d in kind(custom, "Deployment") if d["metadata"]["name"] == "parley-chat-api")
        assert chat_api["metadata"]["labels"]["team"] == "platform"
        pod_labels = chat_api["spec"]["template"]["metadata"]["labels"]
        assert pod_labels["team"] == "platform"
        assert pod_labels["tier"] == "api"

    @pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
    def test_each_deployment_selects_its_own_pods(self, case: Case) -> None:
        docs = render(case.chart, case.values, case.files)
        deployments = kind(docs, "Deployment")
        for deployment in deployments:
            selector = deployment["spec"]["selector"]["matchLabels"]
            assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
            others = [d for d in deployments if d is not deployment]
            assert not any(
                selector.items() <= d["spec"]["template"]["metadata"]["labels"].items() for d in others
            )


class TestNames:
    LONG_RELEASE = "parley-production-eu-west-blue-green-canary-rollout"  # 51 characters

    def test_every_name_and_label_fits_63_characters_with_a_long_release_name(self) -> None:
        docs = render(UMBRELLA, release=self.LONG_RELEASE)
        names = [(d["kind"], d["metadata"]["name"]) for d in docs]
        for kind_name, name in names:
            assert len(name) <= 63, (kind_name, name)
            assert DNS_1035.match(name), (kind_name, name)
        assert len(set(names)) == len(names), "two objects of one kind share a name"
        for doc in docs:
            for value in doc["metadata"]["labels"].values():
                assert len(value) <= 63

    def test_component_suffix_survives_truncation(self) -> None:
        docs = render(UMBRELLA, release=self.LONG_RELEASE)
        deployments = {d["metadata"]["name"] for d in kind(docs, "Deployment")}
        for suffix in ("-api", "-worker", "-beat", "-relay"):
            assert any(name.endswith(suffix) for name in deployments)
        assert (
            len({name for name in deployments if name.endswith("-worker")}) == 5
        )  # gateway, chat, usage, notify, webhooks

    def test_release_named_after_the_chart_is_not_repeated(self) -> None:
        names = {d["metadata"]["name"] for d in kind(render("chat", release="chat"), "Deployment")}
        assert names == {"chat-api", "chat-relay", "chat-worker"}
