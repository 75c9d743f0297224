"""Signed tokens for the links in our messages: `<payload>.<signature>`,
both base64url without padding. The payload is compact JSON; the signature
is HMAC-SHA256 of the payload bytes with UNSUBSCRIBE_SECRET, the one key of
every link we send. Each kind of token has its own fields (and the newer
ones a purpose, `p`), so a token of one kind is malformed as another.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any


class InvalidToken(ValueError):
    """Forged, tampered, malformed or expired; the message says which, and
    `kind` in one word (malformed, signature, expired) for metrics."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(payload: bytes, secret: str) -> bytes:
    return hmac.new(secret.encode(), payload, hashlib.sha256).digest()


def encode(fields: dict[str, Any], secret: str) -> str:
    payload = json.dumps(fields, separators=(",", ":")).encode()
    return f"{_b64(payload)}.{_b64(_signature(payload, secret))}"


def decode(token: str, secret: str, what: str) -> dict[str, Any]:
    """The fields of a token signed with `secret`; `what` names the token in errors."""
    try:
        encoded_payload, encoded_signature = token.split(".")
        payload, signature = _unb64(encoded_payload), _unb64(encoded_signature)
    except ValueError:
        raise InvalidToken(f"malformed {what}", "malformed") from None
    if not hmac.compare_digest(signature, _signature(payload, secret)):
        raise InvalidToken(f"{what} signature does not match", "signature")
    try:
        fields = json.loads(payload)
    except ValueError:
        fields = None
    if not isinstance(fields, dict):
        raise InvalidToken(f"malformed {what}", "malformed")
    return fields
