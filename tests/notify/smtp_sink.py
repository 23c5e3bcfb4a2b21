"""An SMTP server for tests (aiosmtpd), run as its own process; every accepted message is one JSON line.

Failure injection: ``--fail-first N`` answers 451 (try again later) to the first N messages; a recipient
starting with ``reject-`` gets 550 (mailbox unavailable); a message to ``tempfail<N>-…`` gets 451 for its
first N tries (counted by Message-ID). With ``--tls-cert``/``--tls-key`` it
offers STARTTLS, and with ``--auth USER:PASS`` it requires AUTH (after STARTTLS).
"""

from __future__ import annotations

import argparse
import email
import email.policy
import json
import re
import signal
import ssl
import threading
import time
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

TEMPFAIL = re.compile(r"^tempfail(\d+)-")


class Sink:
    def __init__(self, out: str, fail_first: int) -> None:
        self.out = open(out, "a", encoding="utf-8")  # noqa: SIM115 - open for the life of the process
        self.fail_remaining = fail_first
        self.tries: dict[str, int] = {}
        self.lock = threading.Lock()

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        if address.startswith("reject-"):
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            if self.fail_remaining > 0:
                self.fail_remaining -= 1
                return "451 4.3.0 try again later"
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        planned = [int(m.group(1)) for m in map(TEMPFAIL.match, envelope.rcpt_tos) if m]
        if planned:
            with self.lock:
                key = str(message["Message-ID"])
                self.tries[key] = self.tries.get(key, 0) + 1
                if self.tries[key] <= max(planned):
                    return "451 4.7.1 greylisted, try again later"
        record = {
            "message_id": message["Message-ID"],
            "to": list(envelope.rcpt_tos),
            "from": envelope.mail_from,
            "subject": message["Subject"],
            "received_at": time.time(),
            "tls": session.ssl is not None,
            "authenticated": bool(session.authenticated),
            "raw": envelope.content.decode("utf-8", errors="replace"),
        }
        with self.lock:
            self.out.write(json.dumps(record) + "\n")
            self.out.flush()
        return "250 Message accepted for delivery"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--auth", help="USER:PASS that AUTH must present")
    args = parser.parse_args()
    kwargs: dict[str, Any] = {}
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        kwargs.update(tls_context=context, require_starttls=True)
    if args.auth:
        user, _, password = args.auth.partition(":")

        def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
            ok = (
                isinstance(data, LoginPassword)
                and data.login.decode() == user
                and data.password.decode() == password
            )
            return AuthResult(success=ok)

        kwargs.update(authenticator=authenticate, auth_required=True, auth_require_tls=bool(args.tls_cert))
    controller = Controller(Sink(args.out, args.fail_first), hostname="127.0.0.1", port=args.port, **kwargs)
    controller.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    controller.stop()


if __name__ == "__main__":
    main()
