"""What an error of a provider's client says about the request that raised
it: `classify` reads any error as one Verdict, and `ProviderFailure.of` adds
a text fit for logs, the ledger and the workflow. Provider error texts can
echo phone numbers and addresses, so that text is scrubbed."""

from __future__ import annotations

from enum import StrEnum

import aiohttp
from python_http_client.exceptions import HTTPError
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException

from providers import LookUpUnavailable, Provider
from providers.privacy import scrub

# Twilio: the recipient replied STOP (or opted out otherwise).
TWILIO_OPTED_OUT = 21610


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


def classify(err: Exception) -> Verdict:
    """One reading for every error of the providers' clients (aiohttp, and
    the errors Twilio's client and SendGrid's (python_http_client) raise for
    an answer). An error that proves nothing, whatever it is, means the
    request may have arrived."""
    if _code_of(err) == TWILIO_OPTED_OUT:
        return Verdict.OPTED_OUT
    if isinstance(err, LookUpUnavailable):
        return Verdict.REFUSED
    status = _status_of(err)
    if status is not None:
        return _verdict_for_status(status, err)
    if isinstance(err, (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError)):
        return Verdict.MISCONFIGURED
    # No connection (refused, unresolved, TLS handshake failed), or none
    # within the connect limit: nothing was written. A read timeout, or the
    # server closing the connection, comes after the request was written.
    if isinstance(err, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)):
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
