"""Entry points: ``parley-gateway-api``, ``-migrate``, ``-relay``, ``-worker`` and ``-admin``."""

from __future__ import annotations

import argparse
import os
import socket
import sys

from parley_common.api import serve as serve_http
from parley_common.db.migrations import upgrade

from parley_gateway.config import get_settings
from parley_gateway.models import SCHEMA


def serve() -> None:
    settings = get_settings()
    if settings.jwt_private_keys is None and settings.env != "prod":
        # One development key for every worker process, so a token signed by one verifies on the others.
        from parley_common.auth.keys import generate_private_key_pem

        os.environ["PARLEY_JWT_PRIVATE_KEYS"] = generate_private_key_pem()
        get_settings.cache_clear()
        settings = get_settings()
    if not settings.http_reuse_port:
        serve_http("parley_gateway.app:create_app", "gateway", settings)
        return
    # Several gateway processes on one port (SO_REUSEPORT): the kernel spreads connections over them.
    import uvicorn
    from parley_common.process import init_process

    init_process("gateway", "api", settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((settings.http_host, settings.http_port))
    sock.listen(2048)
    config = uvicorn.Config(
        "parley_gateway.app:create_app",
        factory=True,
        log_config=None,
        access_log=False,
        proxy_headers=True,
        server_header=False,
        timeout_graceful_shutdown=int(settings.http_graceful_shutdown),
        timeout_keep_alive=settings.http_keep_alive,
    )
    uvicorn.Server(config).run(sockets=[sock])


def migrate() -> None:
    upgrade("parley_gateway", get_settings().database_url.get_secret_value(), SCHEMA)


def relay() -> None:
    from parley_common.messaging.relay import run_relay_process

    from parley_gateway.models import OutboxMessage

    run_relay_process("gateway", get_settings(), OutboxMessage.outbox_table())


def worker() -> None:
    from parley_common.messaging.worker import run_worker

    from parley_gateway.worker import app, get_worker_settings

    run_worker(app, get_worker_settings())


def admin() -> None:
    """``parley-gateway-admin promote EMAIL`` (or ``demote``): the first administrator has to come from somewhere."""
    parser = argparse.ArgumentParser(prog="parley-gateway-admin")
    parser.add_argument("action", choices=["promote", "demote"])
    parser.add_argument("email")
    args = parser.parse_args()
    from parley_gateway.worker import set_role

    found = set_role(args.email, "admin" if args.action == "promote" else "user")
    if not found:
        print(f"no account with email {args.email}", file=sys.stderr)  # noqa: T201
        sys.exit(1)
    print(f"{args.email}: {'admin' if args.action == 'promote' else 'user'}")  # noqa: T201
