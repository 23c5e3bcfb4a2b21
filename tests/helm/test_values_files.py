"""The values files: generated schemas up to date, one shared `global` block, every key documented, and
every process a service installs deployed by its chart."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from tests.helm.charts import CHARTS, HELM_SRC, SERVICE_CHARTS, UMBRELLA
from tests.images.workspace import DEPLOYED, services

_KEY = re.compile(r"^(?P<indent>\s*)(?P<item>- )?(?P<key>[A-Za-z0-9_.\-/]+):(\s|$)")


def global_block(chart: str) -> str:
    """The raw text of the chart's `global:` block, with the comment lines above it."""
    lines = (HELM_SRC / chart / "values.yaml").read_text().splitlines()
    start = lines.index("global:")
    while start > 0 and lines[start - 1].startswith("#"):
        start -= 1
    end = next(
        i
        for i in range(lines.index("global:") + 1, len(lines))
        if lines[i] and not lines[i].startswith((" ", "#"))
    )
    while lines[end - 1] == "" or (lines[end - 1].startswith("#") and not lines[end - 1].startswith("  ")):
        end -= 1
    return "\n".join(lines[start:end])


def undocumented_keys(text: str) -> list[str]:
    """Mapping keys (outside list items) whose line is not directly under a comment line."""
    missing = []
    stack: list[tuple[int, bool]] = []
    previous = ""
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            previous = line
            continue
        match = _KEY.match(line)
        indent = len(line) - len(line.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        in_list = any(is_item for _, is_item in stack) or stripped.startswith("- ")
        if match and not in_list and not previous.strip().startswith("#"):
            missing.append(f"line {number}: {stripped}")
        stack.append((indent, stripped.startswith("- ")))
        previous = line
    return missing


def test_values_schemas_are_generated_from_deploy_helm_values_schema_py() -> None:
    result = subprocess.run(
        [sys.executable, str(HELM_SRC / "values_schema.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_every_chart_carries_the_same_global_block() -> None:
    reference = global_block(UMBRELLA)
    assert "region:" in reference
    for chart in SERVICE_CHARTS:
        assert global_block(chart) == reference, f"{chart}/values.yaml's global block differs from parley's"


@pytest.mark.parametrize("chart", CHARTS)
def test_every_key_of_values_yaml_is_documented(chart: str) -> None:
    text = (HELM_SRC / chart / "values.yaml").read_text()
    assert text.startswith("# yaml-language-server: $schema=./values.schema.json")
    assert undocumented_keys(text) == []


def test_the_documentation_check_catches_a_bare_key() -> None:
    assert undocumented_keys(
        "# -- documented\na: 1\nb: 2\n# -- a list\nlist:\n  - name: x\n    value: y\n"
    ) == ["line 3: b: 2"]


def service_scripts() -> dict[str, list[str]]:
    """Console scripts a chart must run, by service (command-line tools aside)."""
    return {
        service.name: [script for script in service.scripts if service.role(script) in DEPLOYED]
        for service in services()
    }


def chart_commands(chart: str) -> set[str]:
    values = yaml.safe_load((HELM_SRC / chart / "values.yaml").read_text())
    blocks = [*values["components"].values(), values.get("migrations", {})]
    return {block["command"][0] for block in blocks if block.get("command")}


def test_every_process_a_service_installs_is_deployed_by_its_chart() -> None:
    scripts = service_scripts()
    assert set(scripts) <= set(SERVICE_CHARTS), "a service without a chart"
    for service, names in scripts.items():
        missing = set(names) - chart_commands(service)
        assert not missing, f"{service}: {sorted(missing)} not run by deploy/helm/{service}"


def test_region_files_are_for_the_umbrella_chart() -> None:
    for region in sorted((HELM_SRC / "values").glob("*.yaml")):
        assert region.read_text().startswith("# yaml-language-server: $schema=../parley/values.schema.json")
        assert set(yaml.safe_load(region.read_text())) <= {"global", *SERVICE_CHARTS}


def test_chart_versions_agree() -> None:
    versions = {
        yaml.safe_load((HELM_SRC / chart / "Chart.yaml").read_text())["version"]
        for chart in (*CHARTS, "common")
    }
    assert len(versions) == 1
    umbrella = yaml.safe_load((HELM_SRC / UMBRELLA / "Chart.yaml").read_text())
    assert {d["name"] for d in umbrella["dependencies"]} == set(SERVICE_CHARTS)
    assert all(d["version"] in versions for d in umbrella["dependencies"])
