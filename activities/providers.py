"""Message providers: SendGrid email, Twilio SMS, and the local outbox used
when no credentials are configured.

The official clients are blocking, so callers run `send` in a thread. Each
provider turns its errors into SendFailure, saying whether a retry can change
the answer (`permanent`) and whether the request may have been accepted even
though no answer came back (`maybe_delivered`: a read timeout or a dropped
connection after the request was written).
"""

from __future__ import annotations

import http.client
import urllib.error
from dataclasses import dataclass
from typing import Protocol

import requests
import urllib3.exceptions
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
    def __init__(self, message: str, *, permanent: bool, maybe_delivered: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.maybe_delivered = maybe_delivered


class Provider(Protocol):
    name: str
    # Whether `look_up` can tell if an earlier, unanswered send was accepted.
    can_look_up: bool

    def send(self, message: RenderedMessage) -> str:
        """Deliver the message; returns the provider's message id."""

    def look_up(self, message: RenderedMessage) -> str | None:
        """The id of this message if the provider already has it, else None."""


def is_permanent_status(status: int) -> bool:
    """429 and 5xx are passing. 401/403 mean our credentials are wrong: fixing
    the configuration makes the same request succeed, so keep retrying."""
    return 400 <= status < 500 and status not in (401, 403, 408, 409, 429)


class SendGridEmail:
    name = "sendgrid"
    # Mail Send takes no idempotency key and the Email Activity API is a paid
    # add-on that lags by minutes, so an unanswered send cannot be checked.
    can_look_up = False

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
        except urllib.error.URLError as err:
            # urllib wraps only errors raised while connecting and writing the
            # request: SendGrid never got the whole of it.
            raise SendFailure(f"SendGrid unreachable: {err.reason}", permanent=False) from None
        except (TimeoutError, ConnectionError, http.client.HTTPException) as err:
            raise SendFailure(
                f"SendGrid did not answer: {err!r}", permanent=False, maybe_delivered=True
            ) from None
        return response.headers.get("X-Message-Id") or f"sendgrid-{message.key}"

    def look_up(self, message: RenderedMessage) -> str | None:
        raise NotImplementedError("SendGrid cannot look up a sent message")


class TwilioSms:
    name = "twilio"
    # Twilio creates the Message resource before it answers the POST, so the
    # Message list tells whether an unanswered request went through.
    can_look_up = True

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
            if _never_reached_server(err):
                raise SendFailure(f"Twilio unreachable: {err}", permanent=False) from None
            raise SendFailure(f"Twilio did not answer: {err}", permanent=False, maybe_delivered=True) from None
        return sent.sid

    def look_up(self, message: RenderedMessage) -> str | None:
        try:
            recent = self._client.api.v2010.account.messages.list(to=message.recipient, from_=self._from, limit=20)
        except TwilioRestException as err:
            raise SendFailure(f"Twilio {err.status} on message lookup: {err.msg}", permanent=False) from None
        except requests.RequestException as err:
            raise SendFailure(f"Twilio unreachable for message lookup: {err}", permanent=False) from None
        return next((m.sid for m in recent if m.body == message.text), None)


def _never_reached_server(err: requests.RequestException) -> bool:
    """True when the connection itself failed, so no request was written."""
    if isinstance(err, requests.ConnectTimeout):
        return True
    reason = getattr(err.args[0], "reason", None) if err.args else None
    return isinstance(err, requests.ConnectionError) and isinstance(reason, urllib3.exceptions.NewConnectionError)
