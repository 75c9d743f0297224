"""Signed unsubscribe tokens: made when a marketing email is rendered,
checked by the HTTP service (web/) when the link is used.

A token is `<payload>.<signature>`, both base64url without padding. The
payload is JSON {"c": customer id, "ch": channel, "exp": unix seconds}; the
signature is HMAC-SHA256 of the payload bytes with UNSUBSCRIBE_SECRET. It
names no address: a leaked link unsubscribes the customer's address from one
channel's marketing, and reveals nothing.

A validly signed token unsubscribes whatever its age: a mail client offers
the one-click unsubscribe of a mail read months later, and stopping marketing
is all a token can do. `exp` is still written, for replicas of the HTTP
service that predate this and require it (a rolling deploy), and not read.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from workflows.models import Channel

# Written as `exp`, not enforced (above).
TOKEN_LIFETIME = timedelta(days=90)


class InvalidToken(ValueError):
    """Forged, tampered or malformed; the message says which, and `kind` in
    one word (malformed, signature) for metrics."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class UnsubscribeClaim:
    customer_id: str
    channel: Channel


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(payload: bytes, secret: str) -> bytes:
    return hmac.new(secret.encode(), payload, hashlib.sha256).digest()


def sign(customer_id: str, channel: Channel, secret: str, now: datetime, lifetime: timedelta = TOKEN_LIFETIME) -> str:
    expires = int((now + lifetime).timestamp())
    payload = json.dumps({"c": customer_id, "ch": channel.value, "exp": expires}, separators=(",", ":")).encode()
    return f"{_b64(payload)}.{_b64(_signature(payload, secret))}"


def verify(token: str, secret: str) -> UnsubscribeClaim:
    try:
        encoded_payload, encoded_signature = token.split(".")
        payload, signature = _unb64(encoded_payload), _unb64(encoded_signature)
    except ValueError:
        raise InvalidToken("malformed unsubscribe token", "malformed") from None
    if not hmac.compare_digest(signature, _signature(payload, secret)):
        raise InvalidToken("unsubscribe token signature does not match", "signature")
    try:
        fields = json.loads(payload)
        return UnsubscribeClaim(customer_id=str(fields["c"]), channel=Channel(fields["ch"]))
    except (ValueError, KeyError, TypeError):
        raise InvalidToken("malformed unsubscribe token", "malformed") from None
