"""What each event says by email: subject, text and HTML bodies (Jinja2 templates in ``templates/``)."""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from email.message import EmailMessage
from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from parley_common.events import (
    EndpointDisabledV1,
    Event,
    PlanChangedV1,
    QuotaThresholdCrossedV1,
    UserDeletedV1,
    UserRegisteredV1,
)

from parley_notify.config import Settings

DISABLE_REASONS = {
    "gone": "it answered 410 Gone, which asks senders to stop.",
    "failing": "every delivery to it has failed for too long.",
}


@dataclass(frozen=True)
class Email:
    template: str
    subject: str
    context: dict[str, Any]


@cache
def environment() -> Environment:
    # HTML escapes everything it interpolates (URLs and plan names come from users and providers).
    return Environment(
        loader=PackageLoader("parley_notify", "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )


def describe(event: Event) -> Email:
    """The email an event becomes."""
    if isinstance(event, UserRegisteredV1):
        return Email("welcome", "Welcome to Parley", {"email": str(event.email)})
    if isinstance(event, QuotaThresholdCrossedV1):
        period = "daily" if event.period == "day" else "monthly"
        return Email(
            "quota_threshold",
            f"You have used {event.threshold_percent}% of your {period} token quota",
            {
                "percent": event.threshold_percent,
                "period_name": period,
                "used_tokens": event.used_tokens,
                "quota_tokens": event.quota_tokens,
                "plan": event.plan,
            },
        )
    if isinstance(event, PlanChangedV1):
        return Email(
            "plan_changed",
            f"Your Parley plan is now {event.plan}",
            {"plan": event.plan, "previous_plan": event.previous_plan},
        )
    if isinstance(event, EndpointDisabledV1):
        return Email(
            "endpoint_disabled",
            "A webhook endpoint was disabled",
            {"url": event.url, "reason_text": DISABLE_REASONS.get(event.reason, event.reason)},
        )
    if isinstance(event, UserDeletedV1):
        return Email("account_deleted", "Your Parley account was deleted", {"email": str(event.email)})
    raise ValueError(f"no email for {event.type}")


def message_id(event: Event, settings: Settings) -> str:
    """Derived from the event id, so every resend of one event carries the same Message-ID."""
    return f"<{event.id}@{settings.mail_message_id_domain}>"


def render(event: Event, recipient: str, settings: Settings) -> tuple[Email, EmailMessage]:
    spec = describe(event)
    context = {**spec.context, "subject": spec.subject, "public_url": settings.public_url}
    env = environment()
    text = env.get_template(f"{spec.template}.txt").render(context)
    html = env.get_template(f"{spec.template}.html").render(context)
    message = EmailMessage()
    message["From"] = settings.mail_from
    message["To"] = recipient
    message["Subject"] = spec.subject
    message["Message-ID"] = message_id(event, settings)
    message["Date"] = email.utils.format_datetime(event.time)
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies
    message["X-Parley-Event-Type"] = event.type
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return spec, message
