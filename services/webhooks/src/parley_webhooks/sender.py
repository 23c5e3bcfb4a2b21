"""One HTTP attempt to a checked address: no redirects, a hard deadline, a capped response.

The request goes through httpcore with a network backend that ignores the URL's host when connecting and
dials the address the SSRF check approved instead, so the request keeps its ``Host`` header and TLS server
name (certificates are verified against the host name) while DNS is never consulted again. Every read and
write gets at most what is left of the attempt's deadline, so a receiver trickling bytes cannot hold a
worker past ``timeout``. Bodies are read raw (no decompression) and only up to the cap.
"""

from __future__ import annotations

import email.utils
import ipaddress
import ssl
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import httpcore

from parley_webhooks.ssrf import CheckedUrl, UnsafeUrl, UrlPolicy

USER_AGENT = "Parley-Webhooks/1.0"


@dataclass(frozen=True)
class AttemptResult:
    outcome: str  # succeeded | failed | timeout | network_error | refused_address
    status_code: int | None = None
    latency_ms: int = 0
    address: str | None = None
    error: str | None = None
    body: bytes = b""
    truncated: bool = False
    retry_after: float | None = None

    @property
    def succeeded(self) -> bool:
        return self.outcome == "succeeded"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delay-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    reference = now if now is not None else time.time()
    return max(0.0, when.timestamp() - reference)


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def cap(self, timeout: float | None) -> float:
        left = self.at - time.monotonic()
        if left <= 0:
            raise httpcore.ReadTimeout("attempt deadline reached")
        return left if timeout is None else min(timeout, left)


class _PinnedStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, deadline: _Deadline) -> None:
        self.inner = inner
        self.deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max_bytes, self.deadline.cap(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, self.deadline.cap(timeout))

    def close(self) -> None:
        self.inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        inner = self.inner.start_tls(ssl_context, server_hostname, self.deadline.cap(timeout))
        return _PinnedStream(inner, self.deadline)

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


class _PinnedBackend(httpcore.NetworkBackend):
    """Connects to one fixed address whatever host the URL names."""

    def __init__(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address, deadline: _Deadline) -> None:
        self.address = str(address)
        self.deadline = deadline
        self.inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self.inner.connect_tcp(
            self.address, port, self.deadline.cap(timeout), local_address, socket_options
        )
        return _PinnedStream(stream, self.deadline)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not webhook targets")


class Sender:
    """Sends one signed POST per call, after checking the URL against the SSRF policy."""

    def __init__(
        self,
        policy: UrlPolicy,
        *,
        timeout: float,
        connect_timeout: float,
        response_cap: int,
        ca_file: str | None = None,
    ) -> None:
        self.policy = policy
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.response_cap = response_cap
        # One context for the process: loading the trust store is the slow part, wrapping is thread-safe.
        self.ssl_context = ssl.create_default_context(cafile=ca_file)

    def send(self, url: str, headers: Mapping[str, str], body: bytes) -> AttemptResult:
        try:
            checked = self.policy.check(url)
        except UnsafeUrl as exc:
            return AttemptResult("refused_address", error=str(exc)[:500])
        return self._post(checked, headers, body)

    def _post(self, checked: CheckedUrl, headers: Mapping[str, str], body: bytes) -> AttemptResult:
        parsed = checked.url
        started = time.monotonic()
        deadline = _Deadline(self.timeout)
        request_headers = [
            (b"host", parsed.host_header.encode("ascii")),
            (b"user-agent", USER_AGENT.encode()),
            (b"content-type", b"application/json"),
            (b"accept-encoding", b"identity"),
            (b"content-length", str(len(body)).encode()),
            *((name.encode("ascii"), value.encode("ascii")) for name, value in headers.items()),
        ]
        url = httpcore.URL(
            scheme=parsed.scheme.encode(),
            host=parsed.host.encode(),
            port=parsed.port,
            target=parsed.target.encode(),
        )
        timeouts = {
            "connect": self.connect_timeout,
            "read": self.timeout,
            "write": self.timeout,
            "pool": self.connect_timeout,
        }
        address = str(checked.address)

        def elapsed() -> int:
            return int((time.monotonic() - started) * 1000)

        pool = httpcore.ConnectionPool(
            ssl_context=self.ssl_context,
            max_connections=1,
            max_keepalive_connections=0,  # never reuse: the next attempt is checked and pinned afresh
            retries=0,
            network_backend=_PinnedBackend(checked.address, deadline),
        )
        try:
            with pool.stream(
                b"POST", url, headers=request_headers, content=body, extensions={"timeout": timeouts}
            ) as response:
                chunks: list[bytes] = []
                size = 0
                truncated = False
                for chunk in response.iter_stream():
                    room = self.response_cap - size
                    if len(chunk) >= room:
                        chunks.append(chunk[:room])
                        size += room
                        declared = _header(response, b"content-length")
                        exact_fit = len(chunk) == room and declared is not None and declared == str(size)
                        truncated = not exact_fit
                        break  # the rest is never read: closing the stream drops the connection
                    chunks.append(chunk)
                    size += len(chunk)
                status = response.status
                retry_after = (
                    parse_retry_after(_header(response, b"retry-after")) if status in (429, 503) else None
                )
            outcome = "succeeded" if 200 <= status < 300 else "failed"
            error = None
            if 300 <= status < 400:
                error = "redirects are not followed"
            return AttemptResult(
                outcome,
                status_code=status,
                latency_ms=elapsed(),
                address=address,
                error=error,
                body=b"".join(chunks),
                truncated=truncated,
                retry_after=retry_after,
            )
        except httpcore.TimeoutException as exc:
            return AttemptResult("timeout", latency_ms=elapsed(), address=address, error=_describe(exc))
        except (httpcore.NetworkError, httpcore.ProtocolError, ssl.SSLError, OSError) as exc:
            return AttemptResult("network_error", latency_ms=elapsed(), address=address, error=_describe(exc))
        finally:
            pool.close()


def _header(response: httpcore.Response, name: bytes) -> str | None:
    value = next((v for k, v in response.headers if k.lower() == name), None)
    return value.decode("latin-1") if value is not None else None


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]
