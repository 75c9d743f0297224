"""Message providers: SendGrid email (sendgrid.py: the official package's
request, sent by aiohttp) and Twilio SMS (twilio.py: the official client on
its async HTTP client), what their errors mean (verdicts.py), and
the customer data kept out of their texts and logs (privacy.py). Used by the
worker's send activity and by the HTTP service (web/).

`send` and `look_up` run on the caller's event loop (aiohttp: no thread
per request), each request bounded by `request_limits`; both raise the
clients' own errors, which `verdicts.classify` reads. A provider keeps its
HTTP connections open between requests: `close` it when done.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol

from aiohttp import ClientSession, ClientTimeout


@dataclass(frozen=True)
class Attachment:
    """A file sent with a mail: shown in its body where the HTML names
    `cid:<content_id>` (inline), else offered as a download."""

    filename: str
    content_type: str
    content: bytes
    content_id: str | None = None


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
    # Mail only (staff mail: the WOCAS report's charts and figures).
    attachments: tuple[Attachment, ...] = ()


class Provider(Protocol):
    # As stored in the ledger, as written for people, what a 401 rejects, and
    # what stops while it does.
    name: str
    title: str
    credentials: str
    sends: str
    # How long after a request `look_up` can tell whether it was accepted.
    visible_after: timedelta

    async def send(self, message: RenderedMessage) -> str:
        """Deliver the message; returns the provider's message id."""

    async def look_up(self, message: RenderedMessage) -> str | None:
        """The id of this message if the provider has it, else None. Raises
        LookUpUnavailable when the provider will not say, for good."""

    async def close(self) -> None:
        """Close its HTTP connections."""


def request_limits(seconds: float) -> ClientTimeout:
    """PROVIDER_TIMEOUT_SECONDS to connect (name resolution, a pooled
    connection's wait and every address tried included), then again for each
    read of the answer, and twice that for the whole request: the time a send
    leaves for it, so neither a stalled upload (aiohttp times reads only once
    the body is written) nor a slow resolver outlives the attempt's lease.
    An error still tells whether the request was written: a connect timeout
    never arrived; any other may have."""
    return ClientTimeout(total=2 * seconds, connect=seconds, sock_connect=seconds, sock_read=seconds)


class LazySession:
    """An aiohttp session with `request_limits`, opened by its first use, on
    the event loop that makes it (aiohttp needs one), kept for the next, and
    opened anew after `close`."""

    def __init__(self, seconds: float) -> None:
        self.limits = request_limits(seconds)
        self._session: ClientSession | None = None

    def get(self) -> ClientSession:
        if self._session is None:
            self._session = ClientSession(timeout=self.limits)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


class LookUpUnavailable(Exception):
    """The provider will not answer look-ups at all (an add-on not bought, a
    key without access): nothing can tell whether a message arrived."""
