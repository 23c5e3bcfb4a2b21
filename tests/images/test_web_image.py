"""The web image: web_files.sh picks up whatever web/ holds, and nginx with the image's nginx.conf serves
it unprivileged, answers the probes, falls back to index.html for app routes and caches only fingerprinted
assets. Runs the real nginx (Debian's; the image uses nginx-unprivileged) as an unprivileged user."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from parley_common.testing.net import free_port, wait_http_ok

from tests.images.workspace import REPO

NGINX_CONF = REPO / "deploy" / "docker" / "nginx.conf"
WEB_FILES = REPO / "deploy" / "docker" / "web_files.sh"


def web_files(context: Path, site: Path) -> None:
    subprocess.run(
        ["sh", str(WEB_FILES), str(context), str(site)], check=True, timeout=120, capture_output=True
    )


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A directory the unprivileged nginx can reach (pytest's tmp_path sits under a root-only 0700 one)."""
    path = Path(tempfile.mkdtemp(prefix="parley-web-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def static_site(workdir: Path) -> Path:
    context = workdir / "context"
    (context / "web" / "assets").mkdir(parents=True)
    (context / "web" / "index.html").write_text("<!doctype html><title>Parley</title><div id=app></div>")
    (context / "web" / "assets" / "app-3f2a1c.js").write_text("console.log('parley')")
    site = workdir / "site"
    web_files(context, site)
    return site


@pytest.fixture
def nginx(static_site: Path, workdir: Path) -> Iterator[str]:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        pytest.fail("nginx is missing: make helm-tools installs it", pytrace=False)
    port = free_port()
    scratch = workdir / "scratch"  # stands in for the pod's /tmp emptyDir
    scratch.mkdir()
    conf = (
        NGINX_CONF.read_text()
        .replace("/tmp/", f"{scratch}/")
        .replace("listen 8080;", f"listen 127.0.0.1:{port};")
        .replace("/usr/share/nginx/html", str(static_site))
    )
    (workdir / "nginx.conf").write_text(conf)
    scratch.chmod(0o777)
    for path in (workdir / "nginx.conf", static_site, *static_site.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    user = "nobody" if os.geteuid() == 0 else None  # unprivileged, like the image's uid 101
    log = (workdir / "nginx.log").open("wb")
    (workdir / "nginx.log").chmod(0o666)  # nginx reopens /dev/stderr, i.e. this file, as its own user
    test = subprocess.run(
        [binary, "-t", "-c", str(workdir / "nginx.conf")], user=user, stdout=log, stderr=log, check=False
    )
    assert test.returncode == 0, (workdir / "nginx.log").read_text()
    process = subprocess.Popen(
        [binary, "-c", str(workdir / "nginx.conf"), "-g", "daemon off;"],
        user=user,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        try:
            wait_http_ok(f"http://127.0.0.1:{port}/livez", timeout=15, alive=lambda: process.poll() is None)
        except RuntimeError:
            log.flush()
            raise AssertionError((workdir / "nginx.log").read_text()) from None
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def test_without_a_web_directory_a_placeholder_page_is_served(tmp_path: Path) -> None:
    site = tmp_path / "site"
    web_files(tmp_path / "empty-context", site)
    assert "/v1" in (site / "index.html").read_text()


def test_probes_answer_like_every_parley_process(nginx: str, static_site: Path) -> None:
    live = httpx.get(f"{nginx}/livez")
    assert live.status_code == 200
    assert live.json() == {"status": "ok"}
    assert httpx.get(f"{nginx}/readyz").json()["status"] == "ok"
    (static_site / "index.html").unlink()
    assert httpx.get(f"{nginx}/readyz").status_code == 503


def test_app_routes_fall_back_to_index_and_are_never_cached_stale(nginx: str) -> None:
    for path in ("/", "/conversations/42"):
        page = httpx.get(f"{nginx}{path}")
        assert page.status_code == 200
        assert "<div id=app>" in page.text
        assert page.headers["cache-control"] == "no-cache"
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["x-frame-options"] == "DENY"
        assert "server" not in page.headers or "nginx/" not in page.headers["server"]


def test_fingerprinted_assets_are_cached_and_missing_ones_are_404(nginx: str) -> None:
    asset = httpx.get(f"{nginx}/assets/app-3f2a1c.js")
    assert asset.status_code == 200
    assert "immutable" in asset.headers["cache-control"]
    missing = httpx.get(f"{nginx}/assets/missing.js")
    assert missing.status_code == 404
    assert "immutable" not in missing.headers.get("cache-control", "")
