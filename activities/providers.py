"""Message providers: SendGrid email and Twilio SMS through their official
clients, and what their errors mean.

The clients are blocking, so callers run `send` and `look_up` in a thread;
both raise the clients' own errors. `classify` reads any error as one
Verdict, and `ProviderFailure.of` adds a text fit for logs, the ledger and
the workflow: provider error texts can echo phone numbers and addresses, so that
text is scrubbed.

The HTTP clients log requests, payloads and headers (recipients, message
bodies, the API key) below WARNING; every provider keeps those records out of
the logs whatever level the process runs at.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.error
from urllib.parse import urlencode
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Protocol

import requests
import urllib3.exceptions
from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import CustomArg, Header, Mail
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
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
    # Mail headers, e.g. List-Unsubscribe: part of the rendering, so every
    # attempt sends the same ones.
    headers: Mapping[str, str] = field(default_factory=dict)


# Twilio: the recipient replied STOP (or opted out otherwise).
TWILIO_OPTED_OUT = 21610
# Where the HTTP service (web/) takes Twilio's status callbacks; each SMS
# names its ledger key there, in the URL Twilio signs.
SMS_STATUS_CALLBACK_PATH = "/webhooks/twilio/status"


class Verdict(StrEnum):
    """What an error says about the request that raised it."""

    # Refused before it was taken (429, 503; SendGrid's 500), or it never left: send again.
    NEVER_ARRIVED = "never arrived"
    # No answer, or a gateway's answer (502, 504) after the service behind it
    # may have taken it: look it up, or leave it in doubt, never resend blindly.
    MAY_HAVE_ARRIVED = "may have arrived"
    # Refused for good (invalid address, unknown number).
    REFUSED = "refused for good"
    # The recipient opted out at the provider (Twilio 21610, after a STOP):
    # suppressed, nothing more goes there.
    OPTED_OUT = "opted out"
    # Our credentials or settings were refused: nothing goes out until fixed.
    MISCONFIGURED = "misconfigured"


class Provider(Protocol):
    # As stored in the ledger, as written for people, what a 401 rejects, and
    # what stops while it does.
    name: str
    title: str
    credentials: str
    sends: str
    # How long after a request `look_up` can tell whether it was accepted.
    visible_after: timedelta

    def send(self, message: RenderedMessage) -> str:
        """Deliver the message; returns the provider's message id."""

    def look_up(self, message: RenderedMessage) -> str | None:
        """The id of this message if the provider has it, else None. Raises
        LookUpUnavailable when the provider will not say, for good."""


class LookUpUnavailable(Exception):
    """The provider will not answer look-ups at all (an add-on not bought, a
    key without access): nothing can tell whether a message arrived."""


def classify(err: Exception) -> Verdict:
    """One reading for every error of the official clients. An error that
    proves nothing, whatever it is, means the request may have arrived."""
    if _code_of(err) == TWILIO_OPTED_OUT:
        return Verdict.OPTED_OUT
    if isinstance(err, LookUpUnavailable):
        return Verdict.REFUSED
    status = _status_of(err)
    if status is not None:
        return _verdict_for_status(status, err)
    if isinstance(err, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema)):
        return Verdict.MISCONFIGURED
    # urllib (SendGrid) wraps only errors raised while connecting and writing
    # the request: the provider never got the whole of it.
    if isinstance(err, urllib.error.URLError) or _connection_never_made(err):
        return Verdict.NEVER_ARRIVED
    return Verdict.MAY_HAVE_ARRIVED


def _status_of(err: Exception) -> int | None:
    if isinstance(err, HTTPError):
        return err.status_code
    if isinstance(err, (TwilioRestException, TwilioServiceException)):
        return err.status
    # A Message list page that was not 200: TwilioException("Unable to fetch page", response).
    if isinstance(err, TwilioException) and len(err.args) > 1:
        return getattr(err.args[1], "status_code", None)
    return None


def _code_of(err: Exception) -> int | None:
    """The provider's own error code (Twilio's, in either error format)."""
    if isinstance(err, (TwilioRestException, TwilioServiceException)):
        return err.code
    return None


def _verdict_for_status(status: int, err: Exception) -> Verdict:
    if status in (401, 403):
        return Verdict.MISCONFIGURED
    if status in (502, 504):
        return Verdict.MAY_HAVE_ARRIVED
    if status == 500 and isinstance(err, (TwilioRestException, TwilioServiceException)):
        # Twilio may have created the Message before failing; asking is cheap.
        return Verdict.MAY_HAVE_ARRIVED
    if status in (408, 409, 429) or status >= 500:
        return Verdict.NEVER_ARRIVED
    if status >= 400:
        return Verdict.REFUSED
    return Verdict.MAY_HAVE_ARRIVED  # an answer the client did not expect


def _connection_never_made(err: Exception) -> bool:
    """requests (Twilio): the connection itself failed, so nothing was written."""
    if isinstance(err, requests.ConnectTimeout):
        return True
    reason = getattr(err.args[0], "reason", None) if isinstance(err, requests.ConnectionError) and err.args else None
    return isinstance(reason, urllib3.exceptions.NewConnectionError)


class ProviderFailure(Exception):
    """An error of a provider's client, read: its verdict, and a text scrubbed
    of customer data and secrets."""

    def __init__(self, verdict: Verdict, text: str, code: int | None = None) -> None:
        super().__init__(text)
        self.verdict = verdict
        # The provider's error code, where it has one (Twilio's 21610...).
        self.code = code

    @classmethod
    def of(cls, provider: Provider, err: Exception) -> ProviderFailure:
        verdict = classify(err)
        return cls(verdict, scrub(_describe(provider, err, verdict)), _code_of(err))


def _describe(provider: Provider, err: Exception, verdict: Verdict) -> str:
    status = _status_of(err)
    if isinstance(err, LookUpUnavailable):
        return str(err)
    if verdict is Verdict.MISCONFIGURED:
        if status is None:
            return f"{provider.title} is misconfigured: {err}"
        return f"{provider.title} rejected {provider.credentials} ({status})"
    if status is not None:
        return f"{provider.title} {status}: {_error_text(err)}"
    if verdict is Verdict.NEVER_ARRIVED:
        return f"{provider.title} unreachable: {err}"
    return f"{provider.title} did not answer: {err!r}"


def _error_text(err: Exception) -> str:
    if isinstance(err, HTTPError):
        body = err.body.decode("utf-8", "replace") if isinstance(err.body, bytes) else str(err.body)
        return body[:300]
    if isinstance(err, TwilioRestException):
        return f"code {err.code}: {err.msg}"
    if isinstance(err, TwilioServiceException):
        return f"code {err.code}: {err.title}" + (f": {err.detail}" if err.detail else "")
    return str(err.args[0])


# What provider texts and HTTP client logs may carry that must not be kept.
_SCRUBBED = (
    (re.compile(r"\?\w+=[^\s'\"<>)]*"), "?<query>"),  # the look-up's ?To=...
    (re.compile(r"[\w.+-]+(?:@|%40)[\w-]+(?:\.[\w-]+)+"), "<email>"),
    (re.compile(r"(?:\+|%2B)\d{6,15}"), "<phone>"),
    (re.compile(r"\b(?:Bearer|Basic)\s+[\w.=+/-]+", re.IGNORECASE), "<credentials>"),
    (re.compile(r"\bSG\.[\w.-]+"), "<api key>"),
)


def scrub(text: str) -> str:
    for pattern, mask in _SCRUBBED:
        text = pattern.sub(mask, text)
    return text


class WithoutCustomerData(logging.Filter):
    """For the loggers of libraries that write requests, payloads and headers
    below WARNING: those records are dropped, whatever level the process runs
    at (a logger's filter holds where a level can be lowered); the rest are
    scrubbed."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return False
        record.msg, record.args = scrub(record.getMessage()), ()
        if record.exc_info:
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
        return True


WITHOUT_CUSTOMER_DATA = WithoutCustomerData()

# Twilio's client logs each request at INFO (URL with To=, headers);
# python_http_client logs SendGrid's payload and headers (the API key) at
# DEBUG; urllib3 logs the look-up URL, To= included, at DEBUG.
HTTP_CLIENT_LOGGERS = (
    "twilio.http_client",
    "python_http_client.client",
    "urllib3.connectionpool",
    "urllib3.connection",
    "urllib3.poolmanager",
    "urllib3.response",
    "urllib3.util.retry",
)


def keep_customer_data_out_of(logger_names: Iterable[str]) -> None:
    for name in logger_names:
        logging.getLogger(name).addFilter(WITHOUT_CUSTOMER_DATA)


# Email Activity answers these when the account lacks the add-on or the API
# key lacks Email Activity access (401, 403), or the search is not one it takes
# (400, 404): asking again will not help.
EMAIL_ACTIVITY_WILL_NOT_SAY = (400, 401, 403, 404)


class SendGridEmail:
    name = "sendgrid"
    title = "SendGrid"
    credentials = "the API key"
    sends = "email sends"

    def __init__(self, config: ProviderConfig) -> None:
        keep_customer_data_out_of(HTTP_CLIENT_LOGGERS)
        self._client = SendGridAPIClient(api_key=config.sendgrid_api_key, host=config.sendgrid_api_host)
        self._client.client.timeout = config.request_timeout
        self._from = (config.email_from, config.email_from_name) if config.email_from_name else config.email_from
        # Mail Send takes no idempotency key: only Email Activity (a paid
        # add-on) can tell whether an unanswered mail arrived, and it shows a
        # mail only minutes after SendGrid took it.
        self.visible_after = config.sendgrid_settle_after

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
        # The message's own headers (List-Unsubscribe...), in the top-level `headers` object.
        for name, value in message.headers.items():
            mail.add_header(Header(name, value))
        response = self._client.send(mail)
        return response.headers.get("X-Message-Id") or f"sendgrid-{message.key}"

    def look_up(self, message: RenderedMessage) -> str | None:
        """Searched in Email Activity by the custom arg every mail carries
        (`message_key`, the ledger key): SendGrid's msg_id if it took it."""
        if '"' in message.key or "\\" in message.key:  # the query language has no escape for these
            raise LookUpUnavailable(f"{message.key!r} cannot be searched for in SendGrid Email Activity")
        query = f"unique_args['message_key']=\"{message.key}\""
        try:
            response = self._client.client.messages.get(query_params={"query": query, "limit": 1})
        except HTTPError as err:
            if err.status_code in EMAIL_ACTIVITY_WILL_NOT_SAY:
                reason = "refused the search" if err.status_code == 400 else (
                    "is not available to this account and API key (a paid add-on, and a key with Email Activity access)"
                )
                raise LookUpUnavailable(f"SendGrid Email Activity {reason} ({err.status_code})") from None
            raise
        found = json.loads(response.body or b"{}").get("messages") or []
        return found[0]["msg_id"] if found else None



class TwilioSms:
    name = "twilio"
    title = "Twilio"
    credentials = "the account SID and auth token"
    sends = "SMS sends"
    # Twilio creates the Message resource before it answers the POST, so the
    # Message list tells at once whether an unanswered request went through.
    visible_after = timedelta(0)

    def __init__(self, config: ProviderConfig) -> None:
        keep_customer_data_out_of(HTTP_CLIENT_LOGGERS)
        self._client = TwilioClient(
            config.twilio_account_sid,
            config.twilio_auth_token,
            http_client=TwilioHttpClient(timeout=config.request_timeout),
        )
        self._client.api.base_url = config.twilio_api_base_url
        self._from = config.twilio_from_number
        self._status_callback = config.web_public_url.rstrip("/") + SMS_STATUS_CALLBACK_PATH

    def send(self, message: RenderedMessage) -> str:
        # The key in the callback URL, not the SID: a callback can come before
        # the send has recorded the SID (or before a look-up has found it).
        callback = f"{self._status_callback}?{urlencode({'key': message.key})}"
        return self._client.api.v2010.account.messages.create(
            to=message.recipient, from_=self._from, body=message.text, status_callback=callback
        ).sid

    def look_up(self, message: RenderedMessage) -> str | None:
        """Matched on To, From and the body, which names the order and the
        touchpoint. Not filtered by DateSent: Twilio leaves it empty while a
        message is still queued, which is when a lost answer is looked up."""
        recent = self._client.api.v2010.account.messages.list(to=message.recipient, from_=self._from, limit=50)
        return next((m.sid for m in recent if m.body == message.text), None)
