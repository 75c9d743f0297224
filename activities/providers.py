"""Message providers: SendGrid email, Twilio SMS, and the local outbox used
when no credentials are configured.

The official clients are blocking, so callers run `send` in a thread. Each
provider turns its errors into SendFailure with `permanent` set for answers
that a retry cannot change.
"""

from __future__ import annotations

import socket
import urllib.error
from dataclasses import dataclass
from typing import Protocol

import requests
from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import CustomArg, Mail
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client as TwilioClient

from activities.config import ProviderConfig


@dataclass(frozen=True)
class RenderedMessage:
    key: str
    recipient: str
    subject: str
    text: str
    html: str


class SendFailure(Exception):
    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class Provider(Protocol):
    name: str

    def send(self, message: RenderedMessage) -> str:
        """Deliver the message; returns the provider's message id."""


def is_permanent_status(status: int) -> bool:
    """429 and 5xx are passing. 401/403 mean our credentials are wrong: fixing
    the configuration makes the same request succeed, so keep retrying."""
    return 400 <= status < 500 and status not in (401, 403, 408, 409, 429)


class SendGridEmail:
    name = "sendgrid"

    def __init__(self, config: ProviderConfig) -> None:
        self._client = SendGridAPIClient(api_key=config.sendgrid_api_key, host=config.sendgrid_api_host)
        self._client.client.timeout = config.request_timeout
        self._from = (config.email_from, config.email_from_name) if config.email_from_name else config.email_from

    def send(self, message: RenderedMessage) -> str:
        mail = Mail(
            from_email=self._from,
            to_emails=message.recipient,
            subject=message.subject,
            plain_text_content=message.text,
            html_content=message.html,
        )
        # Carried into SendGrid's event webhook so deliveries map back to the
        # ledger. Per personalization: the spec types only that one as an object.
        mail.personalizations[0].add_custom_arg(CustomArg("message_key", message.key))
        try:
            response = self._client.send(mail)
        except HTTPError as err:
            body = err.body.decode("utf-8", "replace") if isinstance(err.body, bytes) else str(err.body)
            raise SendFailure(
                f"SendGrid {err.status_code}: {body[:300]}", permanent=is_permanent_status(err.status_code)
            ) from None
        except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as err:
            raise SendFailure(f"SendGrid unreachable: {err}", permanent=False) from None
        return response.headers.get("X-Message-Id") or f"sendgrid-{message.key}"


class TwilioSms:
    name = "twilio"

    def __init__(self, config: ProviderConfig) -> None:
        self._client = TwilioClient(
            config.twilio_account_sid,
            config.twilio_auth_token,
            http_client=TwilioHttpClient(timeout=config.request_timeout),
        )
        self._client.api.base_url = config.twilio_api_base_url
        self._from = config.twilio_from_number

    def send(self, message: RenderedMessage) -> str:
        try:
            sent = self._client.api.v2010.account.messages.create(to=message.recipient, from_=self._from, body=message.text)
        except TwilioRestException as err:
            raise SendFailure(
                f"Twilio {err.status} (code {err.code}): {err.msg}", permanent=is_permanent_status(err.status)
            ) from None
        except requests.RequestException as err:
            raise SendFailure(f"Twilio unreachable: {err}", permanent=False) from None
        return sent.sid
