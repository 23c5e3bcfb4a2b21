"""Strict schema validation of rendered manifests for Kubernetes 1.30.

- Core kinds: kubernetes-validate's strict schemas (every object closed, so an unknown field fails).
  kubernetes-validate passes a document it has no schema for; here "no schema" is a failure, which is
  also how an API version removed by 1.30 (autoscaling/v2beta2, policy/v1beta1, ...) fails.
- KEDA's ScaledObject and TriggerAuthentication, and the Prometheus Operator's ServiceMonitor: JSON
  Schemas built from the cloudcoil pydantic models of those CRDs, closed the same way
  (``additionalProperties: false`` on every object that lists its properties), with apiVersion and kind
  pinned.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from typing import Any

import jsonschema
import kubernetes_validate
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

from tests.helm.charts import KUBE_VERSION, Manifest


def _close(node: Any) -> None:
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for value in node.values():
            _close(value)
    elif isinstance(node, list):
        for item in node:
            _close(item)


def strict_crd_schema(model: Any, api_version: str, kind_name: str) -> dict[str, Any]:
    """A closed JSON Schema for one CRD kind from its cloudcoil model."""
    schema = copy.deepcopy(model.model_json_schema(by_alias=True, mode="validation"))
    _close(schema)
    schema["properties"]["apiVersion"] = {"const": api_version}
    schema["properties"]["kind"] = {"const": kind_name}
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})
    return schema


@cache
def crd_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    from cloudcoil.models.keda import v1alpha1 as keda
    from cloudcoil.models.prometheus_operator import v1 as monitoring

    kinds = {
        ("keda.sh/v1alpha1", "ScaledObject"): keda.ScaledObject,
        ("keda.sh/v1alpha1", "TriggerAuthentication"): keda.TriggerAuthentication,
        ("monitoring.coreos.com/v1", "ServiceMonitor"): monitoring.ServiceMonitor,
    }
    validators = {}
    for (api_version, kind_name), model in kinds.items():
        schema = strict_crd_schema(model, api_version, kind_name)
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
        validators[(api_version, kind_name)] = cls(schema)
    return validators


def problems(doc: Manifest) -> list[str]:
    """Why ``doc`` is not a valid Kubernetes 1.30 object (empty when it is)."""
    return list(_problems(json.dumps(doc, sort_keys=True)))


@cache
def _problems(doc_json: str) -> tuple[str, ...]:
    # Most documents repeat across renderings (a region changes a few fields): validate each once.
    doc = json.loads(doc_json)
    where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')} ({doc.get('apiVersion')})"
    validator = crd_validators().get((doc.get("apiVersion", ""), doc.get("kind", "")))
    if validator is not None:
        return tuple(
            f"{where}: {'.'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"
            for error in validator.iter_errors(doc)
        )
    try:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    except SchemaNotFoundError:
        return (f"{where}: no schema for this kind/apiVersion in Kubernetes {KUBE_VERSION}",)
    except ValidationError as error:
        return (f"{where}: {'.'.join(map(str, error.path)) or '(root)'}: {error.message}",)
    return ()
