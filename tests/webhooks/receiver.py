"""A webhook receiver for tests, run as its own process: its answer is chosen by the request path.

    /ok/<tag>                            200
    /flaky/<k>/<tag>                     500 for the first k requests of each webhook-id, then 200
    /status/<code>/<tag>                 always <code>
    /retry-after/<code>/<secs>/<k>/<tag> <code> with Retry-After: <secs> k times per webhook-id, then 200
    /redirect/<tag>                      302 to the first canary
    /slow/<secs>/<k>/<tag>               sleeps <secs> before answering the first k requests per id, then 200
    /big/<bytes>/<tag>                   200 with a body of <bytes> bytes, streamed

Every POST is recorded (arrival time, headers, body, TLS server name) before it is answered, and served
at GET /_control/requests. Canaries (``--canary HOST:PORT``) accept TCP connections and only count them
(GET /_control/canary): they stand for internal services a webhook must never reach.
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LOCK = threading.Lock()
RECORDS: list[dict[str, Any]] = []
COUNTS: dict[tuple[str, str], int] = {}
CANARIES: dict[str, int] = {}
CANARY_URL = ""


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog (5) overflows when a worker's threads all connect at once: the dropped SYNs
    # would show up as connect timeouts that have nothing to do with the code under test.
    request_queue_size = 256


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/livez":
            self._json(200, {"status": "ok"})
        elif self.path == "/_control/requests":
            with LOCK:
                self._json(200, list(RECORDS))
        elif self.path == "/_control/canary":
            with LOCK:
                self._json(200, dict(CANARIES))
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        webhook_id = self.headers.get("webhook-id", "")
        parts = self.path.split("?", 1)[0].strip("/").split("/")
        with LOCK:
            key = (self.path, webhook_id)
            COUNTS[key] = n = COUNTS.get(key, 0) + 1
            record: dict[str, Any] = {
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body.decode("utf-8", errors="replace"),
                "received_at": time.time(),
                "n": n,
                "sni": getattr(self.connection, "parley_sni", None),
            }
            RECORDS.append(record)
        kind = parts[0]
        status, headers, payload, delay = 200, {}, b'{"ok":true}', 0.0
        if kind == "flaky":
            status = 500 if n <= int(parts[1]) else 200
        elif kind == "status":
            status = int(parts[1])
        elif kind == "retry-after":
            if n <= int(parts[3]):
                status, headers = int(parts[1]), {"retry-after": parts[2]}
        elif kind == "redirect":
            status, headers = 302, {"location": CANARY_URL}
        elif kind == "slow":
            if n <= int(parts[2]):
                delay = float(parts[1])
        elif kind == "big":
            record["status"] = 200
            self._stream(int(parts[1]), record)
            return
        record["status"] = status
        if delay:
            time.sleep(delay)
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            record["client_gone"] = True

    def _stream(self, size: int, record: dict[str, Any]) -> None:
        chunk = b"x" * 65536
        sent = 0
        try:
            self.send_response(200)
            self.send_header("content-type", "text/plain")
            self.send_header("content-length", str(size))
            self.end_headers()
            while sent < size:
                piece = chunk[: min(len(chunk), size - sent)]
                self.wfile.write(piece)
                sent += len(piece)
        except OSError:
            record["client_gone"] = True
        record["bytes_written"] = sent
        self.close_connection = True


def canary(address: str) -> None:
    host, port = address.rsplit(":", 1)
    with socket.create_server((host, int(port))) as server:
        with LOCK:
            CANARIES[address] = 0
        while True:
            conn, _ = server.accept()
            with LOCK:
                CANARIES[address] += 1
            conn.close()


def main() -> None:
    global CANARY_URL
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--control-port", type=int, help="plain-HTTP port for /_control when --port is TLS")
    parser.add_argument("--canary", action="append", default=[], help="HOST:PORT to listen on and count")
    args = parser.parse_args()
    for address in args.canary:
        threading.Thread(target=canary, args=(address,), daemon=True).start()
    if args.canary:
        CANARY_URL = f"http://{args.canary[0]}/"
    server = Server((args.host, args.port), Handler)
    if args.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)

        def remember_sni(sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
            sock.parley_sni = name  # type: ignore[union-attr]

        context.sni_callback = remember_sni  # type: ignore[assignment]
        server.socket = context.wrap_socket(server.socket, server_side=True)
    if args.control_port:
        control = Server((args.host, args.control_port), Handler)
        threading.Thread(target=control.serve_forever, daemon=True).start()
    deadline = time.monotonic() + 5
    while args.canary and time.monotonic() < deadline:
        with LOCK:
            if len(CANARIES) == len(args.canary):
                break
        time.sleep(0.01)
    server.serve_forever()


if __name__ == "__main__":
    main()
