"""Render Parley's Helm charts with the real helm binary, Airflow-style: render, then assert on objects.

The charts are copied to a temporary directory and their ``file://`` dependencies built there, so tests
never write into ``deploy/helm`` and parallel test processes never race on ``charts/``.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
HELM_SRC = REPO / "deploy" / "helm"
KUBE_VERSION = "1.30.0"
SERVICE_CHARTS = ("gateway", "chat", "usage", "notify", "webhooks", "web")
PYTHON_CHARTS = ("gateway", "chat", "usage", "notify", "webhooks")
UMBRELLA = "parley"
CHARTS = (*SERVICE_CHARTS, UMBRELLA)
REGION_FILES = tuple(sorted((HELM_SRC / "values").glob("*.yaml")))
RELEASE = "parley"
NAMESPACE = "parley"

Manifest = dict[str, Any]


class RenderError(Exception):
    """helm refused to render (schema violation, a `fail`/`required` in a template, bad YAML)."""


def helm_binary() -> Path:
    path = Path(os.environ.get("PARLEY_HELM", REPO / ".tools" / "bin" / "helm"))
    if not path.is_file():
        pytest.fail(f"helm not found at {path}: run `make helm-tools` (make helm-check does)", pytrace=False)
    return path


def run_helm(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm_binary()), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        check=False,
    )


@cache
def charts_dir() -> Path:
    """A private copy of deploy/helm with every chart's dependencies built (library, then services, then umbrella)."""
    root = Path(tempfile.mkdtemp(prefix="parley-helm-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    target = root / "helm"
    shutil.copytree(HELM_SRC, target, ignore=shutil.ignore_patterns("charts", "Chart.lock", "*.tgz"))
    # lint("common") reads the library chart from here too.

    def build(chart: str) -> None:
        result = run_helm("dependency", "build", target / chart)
        if result.returncode != 0:
            raise RuntimeError(f"helm dependency build {chart} failed:\n{result.stderr}")

    # The service charts are independent of each other; the umbrella packages them, so it comes last.
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(build, SERVICE_CHARTS))
    build(UMBRELLA)
    return target


def _values_file(values: Mapping[str, Any]) -> Path:
    with tempfile.NamedTemporaryFile(
        "w", suffix=".json", prefix="values-", delete=False, dir=charts_dir().parent
    ) as handle:
        json.dump(values, handle)
    return Path(handle.name)


def _args(values: Mapping[str, Any] | None, files: Iterable[Path]) -> list[str]:
    args: list[str] = []
    for file in files:
        args += ["-f", str(file)]
    if values:
        args += ["-f", str(_values_file(values))]
    return args


def _render(chart: str, values_json: str, files: tuple[Path, ...], release: str) -> tuple[Manifest, ...]:
    values = json.loads(values_json) if values_json else None
    result = run_helm(
        "template", release, charts_dir() / chart,
        "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION, *_args(values, files),
    )  # fmt: skip
    if result.returncode != 0:
        raise RenderError(result.stderr.strip())
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


_cached_render = cache(_render)


def render(
    chart: str,
    values: Mapping[str, Any] | None = None,
    files: Iterable[Path] = (),
    *,
    release: str = RELEASE,
) -> list[Manifest]:
    """Every document ``helm template`` renders (hooks included), as dicts."""
    key = json.dumps(values, sort_keys=True) if values else ""
    return [json.loads(json.dumps(doc)) for doc in _cached_render(chart, key, tuple(files), release)]


def render_error(chart: str, values: Mapping[str, Any] | None = None, files: Iterable[Path] = ()) -> str:
    """The error helm prints when it refuses to render; fails the test if it renders."""
    try:
        render(chart, values, files)
    except RenderError as exc:
        return str(exc)
    pytest.fail(f"helm rendered {chart} with values {values} and files {list(files)}, expected a refusal")


def lint(chart: str, files: Iterable[Path] = ()) -> subprocess.CompletedProcess[str]:
    return run_helm(
        "lint", "--strict", "--kube-version", KUBE_VERSION, charts_dir() / chart, *_args(None, files)
    )


def kind(docs: Iterable[Manifest], kind_name: str) -> list[Manifest]:
    return [doc for doc in docs if doc["kind"] == kind_name]


def named(docs: Iterable[Manifest], kind_name: str, name: str) -> Manifest:
    matches = [doc for doc in docs if doc["kind"] == kind_name and doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind_name} {name}, found {len(matches)}"
    return matches[0]


POD_KINDS = ("Deployment", "Job", "StatefulSet", "DaemonSet", "CronJob")


def pod_spec(doc: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def workloads(docs: Iterable[Manifest]) -> list[Manifest]:
    return [doc for doc in docs if doc["kind"] in POD_KINDS]


def containers(doc: Manifest, *, init: bool = True) -> list[dict[str, Any]]:
    spec = pod_spec(doc)
    return [*(spec.get("initContainers", []) if init else []), *spec["containers"]]


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def component(doc: Manifest) -> str:
    return str(doc["metadata"]["labels"].get("app.kubernetes.io/component", ""))


def chart_of(doc: Manifest) -> str:
    return str(doc["metadata"]["labels"]["app.kubernetes.io/name"])


def secret_placeholder(name: str, key: str) -> str:
    """What a test substitutes for a Secret's value (URL-safe, so composed URLs stay parseable)."""
    return f"secret-{name}-{key}".replace("/", "-")


_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def container_env(docs: Iterable[Manifest], container: Mapping[str, Any]) -> dict[str, str]:
    """The environment Kubernetes would give ``container``: envFrom ConfigMaps, then env in order, with
    secretKeyRefs replaced by :func:`secret_placeholder` and ``$(VAR)`` references expanded."""
    docs = list(docs)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        (config_map,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name]
        env.update(config_map.get("data", {}))
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = _VAR_REF.sub(lambda m: env.get(m[1], m[0]), entry["value"])
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            env[entry["name"]] = secret_placeholder(ref["name"], ref["key"])
    return env
