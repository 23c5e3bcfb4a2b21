"""The services of this workspace, as their images would install and run them.

Everything is discovered from ``services/*/pyproject.toml``: a new service, or a new console script of an
existing one, is picked up without touching the tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "deploy" / "docker" / "install.sh"

# How the charts run each kind of process (deploy/helm), by the suffix of parley-<service>-<suffix>:
# an HTTP API, a process serving PARLEY_METRICS_PORT, the migration Job. Any other console script is a
# command-line tool an operator runs by hand (parley-gateway-admin, ...), which no chart deploys.
HTTP, METRICS, ONCE, TOOL = "http", "metrics", "once", "tool"
ROLES = {"api": HTTP, "worker": METRICS, "relay": METRICS, "beat": METRICS, "migrate": ONCE}
DEPLOYED = (HTTP, METRICS, ONCE)


@dataclass(frozen=True)
class Service:
    name: str
    scripts: tuple[str, ...]
    schema: str | None  # the PostgreSQL schema it migrates, from its parley.migrations entry point

    @property
    def package(self) -> str:
        return f"parley-{self.name}"

    def role(self, script: str) -> str:
        return ROLES.get(script.removeprefix(f"parley-{self.name}-"), TOOL)


def services() -> list[Service]:
    found = []
    for pyproject in sorted((REPO / "services").glob("*/pyproject.toml")):
        project = tomllib.loads(pyproject.read_text())["project"]
        migrations = project.get("entry-points", {}).get("parley.migrations", {})
        found.append(
            Service(
                name=pyproject.parent.name,
                scripts=tuple(sorted(project.get("scripts", {}))),
                schema=next(iter(migrations), None),
            )
        )
    return found


def uv() -> str:
    path = shutil.which("uv")
    if path is None:
        pytest.fail("uv is not on PATH (make install puts it there)", pytrace=False)
    return path


def install_step(*args: str | Path) -> None:
    """One step of deploy/docker/install.sh, as the Dockerfile runs it."""
    env = {
        **os.environ,
        "PATH": f"{Path(uv()).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        # The Dockerfile's interpreter is the image's python3; here it is the one under this venv.
        "PYTHON": getattr(sys, "_base_executable", sys.executable),
    }
    env.pop("VIRTUAL_ENV", None)
    result = subprocess.run(
        ["sh", str(INSTALL), *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, (
        f"install.sh {' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}"
    )


def installed(venv: Path) -> set[str]:
    """Normalised names of the distributions in ``venv``."""
    result = subprocess.run(
        [uv(), "pip", "list", "--python", str(venv / "bin" / "python"), "--format", "freeze"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return {normalise(line.split("==")[0]) for line in result.stdout.splitlines() if "==" in line}


def required(requirements: Path) -> set[str]:
    """Normalised names in an exported requirements file."""
    names = set()
    for line in requirements.read_text().splitlines():
        if line and not line.startswith((" ", "#", "-")):
            names.add(normalise(line.split("==")[0].split(";")[0].strip()))
    return names


def normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(".", "-")


def clean_env(venv: Path, settings: dict[str, str]) -> dict[str, str]:
    """A process environment that knows nothing of the development venv: only the image's PATH and settings."""
    return {
        "PATH": f"{venv / 'bin'}{os.pathsep}/usr/local/bin{os.pathsep}/usr/bin{os.pathsep}/bin",
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        **settings,
    }
