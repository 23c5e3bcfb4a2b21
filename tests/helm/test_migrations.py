"""The migration Job: a pre-install/pre-upgrade hook that waits for PostgreSQL, runs Alembic and fails
the release on error, so no new pod rolls against an old schema. PgBouncer routing."""

from __future__ import annotations

import pytest

from tests.helm.cases import PGBOUNCER
from tests.helm.charts import (
    PYTHON_CHARTS,
    UMBRELLA,
    container_env,
    containers,
    kind,
    named,
    pod_spec,
    render,
)


def job(chart: str, values: dict | None = None) -> tuple[list[dict], dict]:
    docs = render(chart, values)
    (migration,) = kind(docs, "Job")
    return docs, migration


class TestMigrationJob:
    @pytest.mark.parametrize("chart", PYTHON_CHARTS)
    def test_runs_as_a_hook_before_install_and_upgrade(self, chart: str) -> None:
        _, migration = job(chart)
        annotations = migration["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
        assert int(annotations["helm.sh/hook-weight"]) < 0
        # Replaced on the next attempt, deleted on success, kept after a failure for its logs.
        assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"

    @pytest.mark.parametrize("chart", PYTHON_CHARTS)
    def test_waits_for_the_database_then_migrates_and_fails_instead_of_retrying_forever(
        self, chart: str
    ) -> None:
        docs, migration = job(chart)
        spec = pod_spec(migration)
        assert spec["restartPolicy"] == "Never"
        assert migration["spec"]["backoffLimit"] <= 1
        (wait,) = spec["initContainers"]
        (main,) = spec["containers"]
        assert wait["command"][:3] == ["python", "-m", "parley_common.db.wait"]
        timeout = int(wait["command"][wait["command"].index("--timeout") + 1])
        assert migration["spec"]["activeDeadlineSeconds"] > timeout
        assert main["command"] == [f"parley-{chart}-migrate"]
        assert wait["image"] == main["image"]
        # The wait checks the very database the migration will use.
        assert (
            container_env(docs, wait)["PARLEY_DATABASE_URL"]
            == container_env(docs, main)["PARLEY_DATABASE_URL"]
        )

    @pytest.mark.parametrize("chart", PYTHON_CHARTS)
    def test_needs_nothing_the_release_creates(self, chart: str) -> None:
        # Hooks run before the release's own objects exist: no ConfigMap, no ServiceAccount of ours.
        _, migration = job(chart)
        spec = pod_spec(migration)
        assert "serviceAccountName" not in spec
        for container in containers(migration):
            assert "envFrom" not in container
            env = {e["name"] for e in container["env"]}
            assert {"PARLEY_ENV", "PARLEY_REGION", "PARLEY_DATABASE_URL"} <= env

    def test_can_be_disabled(self) -> None:
        assert not kind(render("notify", {"migrations": {"enabled": False}}), "Job")

    def test_web_has_no_migrations(self) -> None:
        assert not kind(render("web"), "Job")

    def test_umbrella_runs_one_migration_per_stateful_service(self) -> None:
        names = sorted(d["metadata"]["name"] for d in kind(render(UMBRELLA), "Job"))
        assert names == sorted(f"parley-{chart}-migrate" for chart in PYTHON_CHARTS)


class TestPgBouncer:
    def test_app_traffic_goes_through_pgbouncer_and_migrations_go_direct(self) -> None:
        docs = render(UMBRELLA, PGBOUNCER)
        for deployment in kind(docs, "Deployment"):
            if deployment["metadata"]["labels"]["app.kubernetes.io/name"] == "web":
                continue
            url = container_env(docs, containers(deployment)[0])["PARLEY_DATABASE_URL"]
            assert "@pgbouncer.parley.svc:6432/parley" in url, deployment["metadata"]["name"]
        for migration in kind(docs, "Job"):
            for container in containers(migration):
                url = container_env(docs, container)["PARLEY_DATABASE_URL"]
                assert "@postgresql:5432/parley" in url, migration["metadata"]["name"]

    def test_migrations_through_pgbouncer_when_asked(self) -> None:
        values = {"global": {"database": {"pgbouncer": {**PGBOUNCER["global"]["database"]["pgbouncer"],
                                                        "migrationsThroughPgbouncer": True}}}}  # fmt: skip
        docs, migration = job("chat", values)
        assert (
            "@pgbouncer.parley.svc:6432/"
            in container_env(docs, containers(migration)[1])["PARLEY_DATABASE_URL"]
        )

    def test_pgbouncer_needs_a_host(self) -> None:
        from tests.helm.charts import render_error

        error = render_error("chat", {"global": {"database": {"pgbouncer": {"enabled": True}}}})
        assert "pgbouncer.host is required" in error

    def test_engines_never_prepare_statements(self) -> None:
        # Transaction pooling hands consecutive statements to different server connections: a prepared
        # statement would not be there. Every engine Parley creates connects with these arguments.
        from parley_common.db.engine import connect_args

        assert connect_args("chat.api")["prepare_threshold"] is None

    def test_read_replica_url_when_set(self) -> None:
        values = {"global": {"database": {"readReplica": {"host": "replica.internal"}}}}
        docs = render("chat", values)
        api = named(docs, "Deployment", "parley-chat-api")
        env = container_env(docs, containers(api)[0])
        assert env["PARLEY_DATABASE_READ_URL"].startswith(
            "postgresql://parley:secret-parley-postgresql-password@replica.internal:5432/"
        )
        _, migration = job("chat", values)
        assert all(
            "PARLEY_DATABASE_READ_URL" not in {e["name"] for e in c["env"]} for c in containers(migration)
        )
