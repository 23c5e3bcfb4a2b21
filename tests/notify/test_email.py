"""Email from events through a real SMTP server (STARTTLS and AUTH required): welcome, quota, plan and
endpoint-disabled emails with text and HTML parts, Message-IDs derived from event ids, one email per
event whatever the redeliveries, transient failures retried, permanent ones recorded."""

from __future__ import annotations

import asyncio
import email
import email.policy
import time
import uuid
from pathlib import Path

import pytest
from parley_common.events import EndpointDisabledV1, Event
from parley_common.testing import rabbitmq
from parley_common.testing.processes import ManagedProcess, ProcessManager

from tests.notify.support import SmtpSink, start_smtp_sink
from tests.support.db import query
from tests.support.tls import make_tls_files
from tests.webhooks.events import plan_changed, quota_crossed, registered
from tests.webhooks.support import (
    Identity,
    Isolated,
    base_env,
    publish,
    start_notify,
    wait_for,
)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_tls_files(tmp_path_factory.mktemp("tls"), ["localhost"])


@pytest.fixture(scope="module")
def smtp(module_processes: ProcessManager, tls: tuple[Path, Path, Path]) -> SmtpSink:
    return start_smtp_sink(
        module_processes, "--tls-cert", str(tls[1]), "--tls-key", str(tls[2]), "--auth", "parley:s3cret-pass"
    )


@pytest.fixture(scope="module")
def notify(
    module_processes: ProcessManager, isolated: Isolated, smtp: SmtpSink, tls: tuple[Path, Path, Path]
) -> ManagedProcess:
    env = base_env(
        isolated,
        Identity.new(),
        PARLEY_SMTP_HOST="127.0.0.1",
        PARLEY_SMTP_PORT=str(smtp.port),
        PARLEY_SMTP_STARTTLS="true",
        PARLEY_SMTP_USERNAME="parley",
        PARLEY_SMTP_PASSWORD="s3cret-pass",
        PARLEY_SMTP_CA_FILE=str(tls[0]),
        PARLEY_SMTP_RETRY_DELAYS="0.2,0.4,0.8",
        PARLEY_TRANSIENT_RETRIES="1",
    )
    return start_notify(module_processes, env)


def send(isolated: Isolated, *events: Event) -> None:
    publish(isolated.amqp_url, list(events))


def sent_log(isolated: Isolated, event_id: uuid.UUID) -> list[dict]:
    return query(isolated.database_url, "SELECT * FROM notify.sent_emails WHERE event_id = :e", e=event_id)


def parse(raw: str) -> email.message.EmailMessage:
    return email.message_from_string(raw, policy=email.policy.default)  # type: ignore[return-value]


class TestEmails:
    def test_welcome_email_has_text_and_html_and_an_event_derived_message_id(
        self, isolated: Isolated, smtp: SmtpSink, notify: ManagedProcess
    ) -> None:
        user = uuid.uuid4()
        event = registered(user)
        send(isolated, event)
        [mail] = wait_for(lambda: smtp.to(str(event.email)), what="welcome email")
        assert mail["message_id"] == f"<{event.id}@parley.local>"
        assert mail["subject"] == "Welcome to Parley"
        assert mail["tls"] is True
        assert mail["authenticated"] is True
        message = parse(mail["raw"])
        assert message.get_content_type() == "multipart/alternative"
        text = message.get_body(("plain",))
        html = message.get_body(("html",))
        assert text is not None
        assert html is not None
        assert str(event.email) in text.get_content()
        assert "<h1" in html.get_content()
        [row] = sent_log(isolated, event.id)
        assert (row["status"], row["template"], row["recipient"]) == ("sent", "welcome", str(event.email))
        [recipient] = query(
            isolated.database_url, "SELECT email FROM notify.recipients WHERE user_id = :u", u=user
        )
        assert recipient["email"] == str(event.email)

    def test_a_redelivered_event_is_emailed_once(
        self, isolated: Isolated, smtp: SmtpSink, notify: ManagedProcess
    ) -> None:
        user = uuid.uuid4()
        event = registered(user)
        marker = registered(uuid.uuid4())
        send(isolated, event, event, event, marker)
        wait_for(lambda: smtp.to(str(marker.email)), what="the marker email")
        time.sleep(0.5)
        assert len(smtp.to(str(event.email))) == 1

    def test_quota_plan_and_disabled_endpoint_emails_go_to_the_registered_address(
        self, isolated: Isolated, smtp: SmtpSink, notify: ManagedProcess
    ) -> None:
        user = uuid.uuid4()
        welcome = registered(user)
        send(isolated, welcome)
        wait_for(lambda: smtp.to(str(welcome.email)), what="welcome email")
        quota = quota_crossed(user, 100)
        plan = plan_changed(user, plan="pro<b>&co")
        disabled = EndpointDisabledV1(
            source="webhooks",
            user_id=user,
            endpoint_id=uuid.uuid4(),
            url="https://hooks.example.com/in?a=1&b=2",
            reason="failing",
        )
        send(isolated, quota, plan, disabled)
        mails = wait_for(
            lambda: len(smtp.to(str(welcome.email))) == 4 and smtp.to(str(welcome.email)), what="4 emails"
        )
        by_id = {m["message_id"]: m for m in mails}
        assert set(by_id) == {f"<{e.id}@parley.local>" for e in (welcome, quota, plan, disabled)}

        quota_mail = parse(by_id[f"<{quota.id}@parley.local>"]["raw"])
        assert quota_mail["Subject"] == "You have used 100% of your daily token quota"
        assert "10000 tokens" in quota_mail.get_body(("plain",)).get_content()

        plan_mail = parse(by_id[f"<{plan.id}@parley.local>"]["raw"])
        assert "pro<b>&co" in plan_mail.get_body(("plain",)).get_content()
        html = plan_mail.get_body(("html",)).get_content()
        assert "pro&lt;b&gt;&amp;co" in html
        assert "pro<b>" not in html

        disabled_mail = parse(by_id[f"<{disabled.id}@parley.local>"]["raw"])
        assert disabled_mail["Subject"] == "A webhook endpoint was disabled"
        assert "https://hooks.example.com/in?a=1&b=2" in disabled_mail.get_body(("plain",)).get_content()
        assert "failed for too long" in disabled_mail.get_body(("plain",)).get_content()


class TestFailures:
    def test_transient_smtp_failures_are_retried_with_backoff(
        self, isolated: Isolated, smtp: SmtpSink, notify: ManagedProcess
    ) -> None:
        event = registered(uuid.uuid4(), email=f"tempfail2-{uuid.uuid4().hex[:8]}@example.com")
        send(isolated, event)
        [mail] = wait_for(lambda: smtp.to(str(event.email)), what="email after two 451s")
        assert mail["message_id"] == f"<{event.id}@parley.local>"
        [row] = wait_for(lambda: sent_log(isolated, event.id), what="sent log row")
        assert (row["status"], row["attempts"]) == ("sent", 3)

    def test_permanent_refusal_is_recorded_and_not_retried(
        self, isolated: Isolated, smtp: SmtpSink, notify: ManagedProcess
    ) -> None:
        event = registered(uuid.uuid4(), email=f"reject-{uuid.uuid4().hex[:8]}@example.com")
        send(isolated, event)
        [row] = wait_for(lambda: sent_log(isolated, event.id), what="sent log row")
        assert (row["status"], row["attempts"]) == ("failed", 1)
        assert "550" in row["error"]
        assert smtp.to(str(event.email)) == []

    def test_an_event_for_an_unknown_user_is_dead_lettered_not_dropped(
        self, isolated: Isolated, smtp: SmtpSink, notify: ManagedProcess
    ) -> None:
        stranger = quota_crossed(uuid.uuid4())
        send(isolated, stranger)

        def in_dlq() -> bool:
            messages = asyncio.run(rabbitmq.drain(isolated.amqp_url, "notify.events.dlq"))
            return any(m.headers.get("id") == str(stranger.id) for m in messages)

        wait_for(in_dlq, timeout=60, interval=1, what="the event in notify.events.dlq")
        assert sent_log(isolated, stranger.id) == []


def test_without_smtp_mail_goes_to_the_file_outbox(
    isolated: Isolated, module_processes: ProcessManager, tmp_path: Path, parley_services: object
) -> None:
    from tests.webhooks.support import resources

    vhost = resources.new_tag()
    amqp_url = rabbitmq.create_vhost(parley_services.rabbitmq_url, vhost)  # type: ignore[attr-defined]
    try:
        outbox = tmp_path / "mail"
        env = base_env(
            Isolated(isolated.database_url, amqp_url, vhost),
            Identity.new(),
            PARLEY_MAIL_OUTBOX_DIR=str(outbox),
        )
        worker = start_notify(module_processes, env, name="notify-file-outbox")
        event = registered(uuid.uuid4())
        publish(amqp_url, [event])
        path = outbox / f"{event.id}.eml"
        wait_for(path.exists, what="the .eml file")
        message = parse(path.read_text())
        assert message["Message-ID"] == f"<{event.id}@parley.local>"
        assert message["To"] == str(event.email)
        worker.stop()
    finally:
        rabbitmq.delete_vhost(vhost)
