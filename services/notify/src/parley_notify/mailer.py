"""Getting a rendered email out: SMTP (host, port, STARTTLS or implicit TLS, AUTH), or a file outbox.

Failures are sorted into two kinds. Permanent: the server refused the sender, every recipient or the
message with a 5xx reply; sending again would be refused again, so it is recorded and dropped.
Transient: everything else (4xx replies, refused or dropped connections, timeouts, TLS and AUTH trouble,
which are configuration an operator can fix); the caller retries with backoff and never drops the email.
"""

from __future__ import annotations

import os
import smtplib
import ssl
import tempfile
import time
from collections.abc import Sequence
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

from parley_common.logs import get_logger

from parley_notify.config import Settings

log = get_logger(__name__)


class TransientMailError(Exception):
    """Try again later."""


class PermanentMailError(Exception):
    """Never going to be accepted; record it."""


class MailUnavailable(Exception):
    """Transient failures outlasted the retry delays."""


class Mailer(Protocol):
    def send(self, message: EmailMessage, key: str) -> None: ...


def _classify(exc: smtplib.SMTPException) -> Exception:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        if codes and all(500 <= code < 600 for code in codes):
            return PermanentMailError(f"recipients refused: {codes}")
        return TransientMailError(f"recipients deferred: {codes}")
    if isinstance(exc, smtplib.SMTPAuthenticationError | smtplib.SMTPNotSupportedError):
        return TransientMailError(f"{type(exc).__name__}: check the SMTP settings")
    if isinstance(exc, smtplib.SMTPResponseException):
        message = (
            exc.smtp_error.decode("utf-8", "replace")
            if isinstance(exc.smtp_error, bytes)
            else str(exc.smtp_error)
        )
        text = f"{exc.smtp_code} {message}"[:400]
        if 500 <= exc.smtp_code < 600:
            return PermanentMailError(text)
        return TransientMailError(text)
    return TransientMailError(type(exc).__name__)


class SmtpMailer:
    """Keeps one SMTP connection per process and reconnects when it was dropped."""

    def __init__(self, settings: Settings) -> None:
        if not settings.smtp_host:
            raise ValueError("SmtpMailer needs PARLEY_SMTP_HOST")
        self.settings = settings
        self.context = ssl.create_default_context(cafile=settings.smtp_ca_file)
        self.connection: smtplib.SMTP | None = None

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        assert s.smtp_host is not None
        connection: smtplib.SMTP
        if s.smtp_ssl:
            connection = smtplib.SMTP_SSL(
                s.smtp_host, s.smtp_port, timeout=s.smtp_timeout, context=self.context
            )
        else:
            connection = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout)
        try:
            connection.ehlo()
            if s.smtp_starttls and not s.smtp_ssl:
                connection.starttls(context=self.context)
                connection.ehlo()
            if s.smtp_username:
                password = s.smtp_password.get_secret_value() if s.smtp_password else ""
                connection.login(s.smtp_username, password)
        except BaseException:
            connection.close()
            raise
        return connection

    def close(self) -> None:
        if self.connection is not None:
            try:
                self.connection.quit()
            except (smtplib.SMTPException, OSError):
                self.connection.close()
            self.connection = None

    def send(self, message: EmailMessage, key: str) -> None:
        for reuse in (True, False):
            try:
                if self.connection is None:
                    self.connection = self._connect()
                self.connection.send_message(message)
                return
            except smtplib.SMTPServerDisconnected as exc:
                self._drop()
                if reuse:
                    continue  # a kept connection the server closed meanwhile: once more on a new one
                raise TransientMailError("the SMTP server closed the connection") from exc
            except smtplib.SMTPException as exc:
                self._drop()
                raise _classify(exc) from exc
            except (OSError, ssl.SSLError) as exc:
                self._drop()
                raise TransientMailError(f"{type(exc).__name__}: {exc}"[:400]) from exc

    def _drop(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


class FileMailer:
    """The development outbox: one ``<event id>.eml`` file per email (rewriting one is idempotent)."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    def send(self, message: EmailMessage, key: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.directory / f"{key}.eml"
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".eml")
        with os.fdopen(fd, "wb") as handle:
            handle.write(bytes(message))
        os.replace(tmp, target)


def mailer_for(settings: Settings) -> Mailer:
    if settings.smtp_host:
        return SmtpMailer(settings)
    log.warning("mail.file_outbox", directory=os.path.abspath(settings.mail_outbox_dir))
    return FileMailer(settings.mail_outbox_dir)


def send_with_retries(
    mailer: Mailer, message: EmailMessage, key: str, delays: Sequence[float]
) -> tuple[int, str | None]:
    """(tries, permanent error or None) once the message is sent or refused for good; raises
    :class:`MailUnavailable` when transient failures outlast ``delays``."""
    last: TransientMailError | None = None
    for tries, delay in enumerate([*delays, None], start=1):
        try:
            mailer.send(message, key)
            return tries, None
        except PermanentMailError as exc:
            return tries, str(exc)
        except TransientMailError as exc:
            last = exc
            log.warning("mail.transient_failure", tries=tries, error=str(exc), retry_in=delay)
            if delay is not None:
                time.sleep(delay)
    raise MailUnavailable(str(last))
