"""The links customers answer by (web/answers.py), signed so that no one
can answer for someone else:

- the feedback request's link to the feedback page, bound to the order and
  expiring when its feedback window closes;
- "Was this helpful?" under every email, yes and no, bound to the message's
  ledger key, and expiring after VOTE_LIFETIME. The same links ask "Was this
  resolved?" under a case's outcome.

A link names no customer and no address: a leaked one lets its holder rate
one order, or vote once on one message.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

from messages.signed_tokens import InvalidToken, decode, encode

VOTE_LIFETIME = timedelta(days=90)


@dataclass(frozen=True)
class FeedbackClaim:
    order_id: str
    expires_at: datetime


@dataclass(frozen=True)
class VoteClaim:
    ledger_key: str
    # The vote the link was for; the page may still record the other.
    helpful: bool


def feedback_token(order_id: str, until: datetime, secret: str) -> str:
    return encode({"p": "feedback", "o": order_id, "exp": int(until.timestamp())}, secret)


def vote_token(ledger_key: str, helpful: bool, now: datetime, secret: str) -> str:
    return encode({"p": "vote", "k": ledger_key, "y": helpful, "exp": int((now + VOTE_LIFETIME).timestamp())}, secret)


def feedback_url(public_url: str, order_id: str, until: datetime, secret: str) -> str:
    return f"{public_url.rstrip('/')}/feedback?token={quote(feedback_token(order_id, until, secret))}"


def vote_urls(public_url: str, ledger_key: str, now: datetime, secret: str) -> tuple[str, str]:
    """The yes and the no link."""
    base = f"{public_url.rstrip('/')}/helpful?token="
    return tuple(base + quote(vote_token(ledger_key, helpful, now, secret)) for helpful in (True, False))  # type: ignore[return-value]


def verify_feedback(token: str, secret: str, now: datetime) -> FeedbackClaim:
    fields = decode(token, secret, "feedback link")
    try:
        if fields["p"] != "feedback":
            raise ValueError
        claim = FeedbackClaim(str(fields["o"]), datetime.fromtimestamp(int(fields["exp"]), timezone.utc))
    except (ValueError, KeyError, TypeError):
        raise InvalidToken("malformed feedback link", "malformed") from None
    _check_expiry(claim.expires_at, now, "feedback link")
    return claim


def verify_vote(token: str, secret: str, now: datetime) -> VoteClaim:
    fields = decode(token, secret, "vote link")
    try:
        if fields["p"] != "vote" or not isinstance(fields["y"], bool):
            raise ValueError
        claim = VoteClaim(str(fields["k"]), fields["y"])
        expires_at = datetime.fromtimestamp(int(fields["exp"]), timezone.utc)
    except (ValueError, KeyError, TypeError):
        raise InvalidToken("malformed vote link", "malformed") from None
    _check_expiry(expires_at, now, "vote link")
    return claim


def _check_expiry(expires_at: datetime, now: datetime, what: str) -> None:
    if now >= expires_at:
        raise InvalidToken(f"this {what} has expired", "expired")
