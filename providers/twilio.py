"""Twilio SMS through its official client on its async HTTP client (aiohttp,
on the caller's event loop): sending and looking up a message (TwilioSms),
and a message's status (TwilioMessages, for the HTTP service's look-ups of
status callbacks that never came)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Protocol
from urllib.parse import urlencode

from aiohttp import BasicAuth
from twilio.http import HttpClient
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from providers import LazySession, RenderedMessage
from providers.privacy import HTTP_CLIENT_LOGGERS, keep_customer_data_out_of

# Where the HTTP service (web/) takes Twilio's status callbacks; each SMS
# names its ledger key there, in the URL Twilio signs.
SMS_STATUS_CALLBACK_PATH = "/webhooks/twilio/status"


class TwilioSettings(Protocol):
    """What the sending client reads of the worker's settings (ProviderConfig)."""

    @property
    def twilio_account_sid(self) -> str | None: ...
    @property
    def twilio_auth_token(self) -> str | None: ...
    @property
    def twilio_api_base_url(self) -> str: ...
    @property
    def twilio_from_number(self) -> str | None: ...
    @property
    def request_timeout(self) -> float: ...
    @property
    def web_public_url(self) -> str: ...


def _client(account_sid: str, auth_token: str, base_url: str, http_client: HttpClient) -> Client:
    keep_customer_data_out_of(HTTP_CLIENT_LOGGERS)
    client = Client(account_sid, auth_token, http_client=http_client)
    client.api.base_url = base_url
    return client


class _SessionWithLimits:
    """An aiohttp session as Twilio's async client uses it, keeping the
    LazySession's limits: the client hands aiohttp each request's `timeout`,
    None unless a call gives one, which aiohttp reads as no limit at all."""

    def __init__(self, timeout: float) -> None:
        self._lazy = LazySession(timeout)

    def request(self, *, timeout: float | None = None, auth: BasicAuth | None = None, **kwargs: Any) -> Any:
        if auth is not None:  # the header aiohttp's `auth` would write, which aiohttp 3.13 deprecates
            kwargs["headers"] = {**(kwargs.get("headers") or {}), "Authorization": auth.encode()}
        session = self._lazy.get()
        return session.request(**kwargs) if timeout is None else session.request(timeout=timeout, **kwargs)

    async def close(self) -> None:
        await self._lazy.close()


class _LimitedAsyncHttpClient(AsyncTwilioHttpClient):
    """Twilio's async HTTP client on a session with `request_limits`, opened
    by the first request and anew after `close`."""

    def __init__(self, timeout: float) -> None:
        super().__init__(pool_connections=False, timeout=timeout)
        self.session = _SessionWithLimits(timeout)


class TwilioSms:
    name = "twilio"
    title = "Twilio"
    credentials = "the account SID and auth token"
    sends = "SMS sends"
    # Twilio creates the Message resource before it answers the POST, so the
    # Message list tells at once whether an unanswered request went through.
    visible_after = timedelta(0)

    def __init__(self, settings: TwilioSettings) -> None:
        self._http = _LimitedAsyncHttpClient(settings.request_timeout)
        self._client = _client(settings.twilio_account_sid, settings.twilio_auth_token, settings.twilio_api_base_url, self._http)
        self._from = settings.twilio_from_number
        self._status_callback = settings.web_public_url.rstrip("/") + SMS_STATUS_CALLBACK_PATH

    async def send(self, message: RenderedMessage) -> str:
        # The key in the callback URL, not the SID: a callback can come before
        # the send has recorded the SID (or before a look-up has found it).
        callback = f"{self._status_callback}?{urlencode({'key': message.key})}"
        created = await self._client.api.v2010.account.messages.create_async(
            to=message.recipient, from_=self._from, body=message.text, status_callback=callback
        )
        return created.sid

    async def look_up(self, message: RenderedMessage) -> str | None:
        """Matched on To, From and the body, which names the order and the
        touchpoint. Not filtered by DateSent: Twilio leaves it empty while a
        message is still queued, which is when a lost answer is looked up."""
        recent = await self._client.api.v2010.account.messages.list_async(to=message.recipient, from_=self._from, limit=50)
        return next((m.sid for m in recent if m.body == message.text), None)

    async def close(self) -> None:
        await self._http.close()


class TwilioMessages:
    """Twilio's Message resources, through the official client on its own
    async HTTP client (aiohttp: nothing blocks the event loop). Open while
    used, and closed after."""

    def __init__(self, account_sid: str, auth_token: str, *, base_url: str, timeout: float) -> None:
        self._http = _LimitedAsyncHttpClient(timeout)
        self._client = _client(account_sid, auth_token, base_url, self._http)

    async def status(self, message_sid: str) -> tuple[str, int | None]:
        """The message's status and error code."""
        message = await self._client.api.v2010.account.messages(message_sid).fetch_async()
        return message.status, message.error_code

    async def close(self) -> None:
        await self._http.close()
