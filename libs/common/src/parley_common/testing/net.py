"""Ports and waiting for things to answer on loopback."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tcp_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def url_tcp_open(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    return tcp_open(parts.hostname or "127.0.0.1", parts.port or default_port)


def wait_http_ok(url: str, timeout: float = 30.0, alive: object = None) -> None:
    """Poll ``url`` until it answers 2xx; ``alive()`` (when given) false means give up at once."""
    deadline = time.monotonic() + timeout
    last: str = "no answer"
    while time.monotonic() < deadline:
        if callable(alive) and not alive():
            raise RuntimeError(f"process exited while waiting for {url}")
        try:
            response = httpx.get(url, timeout=1.0)
            if response.is_success:
                return
            last = f"status {response.status_code}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer 2xx within {timeout}s ({last})")
