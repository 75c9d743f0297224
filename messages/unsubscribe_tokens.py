"""Signed unsubscribe tokens: made when a marketing email is rendered,
checked by the HTTP service (web/) when the link is used.

A token (messages/signed_tokens.py) holds {"c": customer id, "ch": channel,
"exp": unix seconds}. It names no address: a leaked link unsubscribes the
customer's address from one channel's marketing, and reveals nothing.

A validly signed token unsubscribes whatever its age: a mail client offers
the one-click unsubscribe of a mail read months later, and stopping marketing
is all a token can do. `exp` is still written, for replicas of the HTTP
service that predate this and require it (a rolling deploy), and not read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from messages.signed_tokens import InvalidToken, decode, encode
from workflows.models import Channel

# Written as `exp`, not enforced (above).
TOKEN_LIFETIME = timedelta(days=90)

__all__ = ["InvalidToken", "UnsubscribeClaim", "sign", "verify"]


@dataclass(frozen=True)
class UnsubscribeClaim:
    customer_id: str
    channel: Channel


def sign(customer_id: str, channel: Channel, secret: str, now: datetime, lifetime: timedelta = TOKEN_LIFETIME) -> str:
    return encode({"c": customer_id, "ch": channel.value, "exp": int((now + lifetime).timestamp())}, secret)


def verify(token: str, secret: str) -> UnsubscribeClaim:
    fields = decode(token, secret, "unsubscribe token")
    try:
        return UnsubscribeClaim(customer_id=str(fields["c"]), channel=Channel(fields["ch"]))
    except (ValueError, KeyError, TypeError):
        raise InvalidToken("malformed unsubscribe token", "malformed") from None
