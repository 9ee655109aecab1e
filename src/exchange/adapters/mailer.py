"""Sending e-mail: real SMTP (aiosmtplib) or, in development, the log.

The verification code must reach the user and nobody else, so the only places
it ever appears are the e-mail itself and (log mailer only) the server's log.
"""

from __future__ import annotations

import logging
from email.message import EmailMessage
from typing import Protocol

import aiosmtplib

from exchange.config import Settings

log = logging.getLogger("exchange.mail")


class Mailer(Protocol):
    async def send(self, to: str, subject: str, body: str) -> None: ...


class SmtpMailer:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    async def send(self, to: str, subject: str, body: str) -> None:
        s = self._settings
        message = EmailMessage()
        message["From"] = s.mail_from
        message["To"] = to
        message["Subject"] = subject
        message.set_content(body)
        await aiosmtplib.send(
            message,
            hostname=s.smtp_host,
            port=s.smtp_port,
            username=s.smtp_user or None,
            password=s.smtp_password or None,
            use_tls=s.smtp_tls == "tls",
            start_tls=s.smtp_tls == "starttls",
            timeout=15,
        )


class LogMailer:
    """Development only: writes the whole message to the log."""

    async def send(self, to: str, subject: str, body: str) -> None:
        log.warning("MAIL (no SMTP configured) to=%s subject=%s\n%s", to, subject, body)


def make_mailer(settings: Settings) -> Mailer:
    if settings.smtp_host:
        return SmtpMailer(settings)
    log.warning(
        "EXCHANGE_SMTP_HOST is not set: verification codes are written to this log "
        "(development only, never run a public exchange like this)"
    )
    return LogMailer()
