"""What providers report about a message after they took it (SendGrid's
Event Webhook, Twilio's status callbacks), read and written to PostgreSQL.
The HTTP service calls this in its own transaction, then signals the order.

Each event is kept once in `provider_events` (its id is unique, so a repeat
changes nothing) and, when it is about one of our messages (the ledger key
SendGrid carries as the custom arg `message_key`, and Twilio in the
StatusCallback URL), it:

- settles a ledger row still 'sending' or 'in_doubt' as 'sent', with the
  provider's message id: any event proves the provider had the message, so
  no attempt sends it again (the in-doubt settlement reads this);
- records what it says about delivery in the row's `delivery`: delivered,
  bounced, dropped, undelivered, failed, spam_report (a later 'delivered'
  never hides an earlier failure or complaint);
- suppresses the recipient when nothing more should go there: a hard bounce,
  a spam report, a mail SendGrid drops because the address is on one of its
  suppression lists, an SMS to a number that opted out or does not exist;
- for an order's message that did not arrive, names the signal its workflow
  must hear (`message_undelivered`), and for an order's mail left in doubt
  for good (flagged: Email Activity could not tell) the one that settles it
  (`message_settled`), owed until delivered (the HTTP service's relay,
  web/signals.py).

What customers submit through the pages (feedback, votes) is kept here
too, as provider `customer`, with the signal it owes (`owe`), so that the
same relay delivers it.

Messages of the customer's journey get the first three only: the journey's
next send reads the suppression and hands itself to SMS where consent allows.
No provider's event kept here holds an address, a number or a message
body; reasons are scrubbed of them. What a customer submits (stars, a
comment) is kept in the signal it owes, as the workflow will hear it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

import asyncpg

from providers.privacy import scrub
from providers.verdicts import TWILIO_OPTED_OUT
from store.consent import suppress
from workflows.ledger_key import LedgerKey
from workflows.models import Channel, DeliveryState, MessageOutcome, MessageUndelivered, workflow_id_for


class Delivery(StrEnum):
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    DROPPED = "dropped"
    UNDELIVERED = "undelivered"
    FAILED = "failed"
    SPAM_REPORT = "spam_report"


# The message did not reach the recipient: the other channel may carry it.
NOT_DELIVERED = frozenset({Delivery.BOUNCED, Delivery.DROPPED, Delivery.UNDELIVERED, Delivery.FAILED})

# SendGrid drops mail to addresses on its own suppression lists, and to
# invalid ones: every later mail there would be dropped too.
SENDGRID_DROPPED_FOR_GOOD = frozenset({"Bounced Address", "Spam Reporting Address", "Unsubscribed Address", "Invalid"})
# Twilio error codes that no later SMS to the number gets past: opted out
# (21610), unknown destination (30005), landline or unreachable carrier (30006).
TWILIO_GONE_FOR_GOOD = frozenset({TWILIO_OPTED_OUT, 30005, 30006})
TWILIO_DELIVERY = {"delivered": Delivery.DELIVERED, "undelivered": Delivery.UNDELIVERED, "failed": Delivery.FAILED}

REASON_LENGTH = 300
# provider_events.event of an event we could not read.
UNREADABLE = "unreadable"
# provider_events.provider of what customers submit through the pages (web/answers.py).
CUSTOMER = "customer"
UNDELIVERED_SIGNAL = "message_undelivered"
SETTLED_SIGNAL = "message_settled"


@dataclass(frozen=True)
class ProviderEvent:
    """One event, read: what it says about its message."""

    provider: str
    event_id: str
    # As the provider names it.
    event: str
    # None: not one of our messages.
    ledger_key: str | None
    provider_message_id: str | None
    occurred_at: datetime | None
    # Scrubbed of contact data.
    detail: str | None
    delivery: Delivery | None = None
    # Why nothing more should go to the recipient; None: it may.
    suppression: str | None = None


@dataclass(frozen=True)
class Signal:
    workflow_id: str
    name: str
    payload: dict[str, Any]
    # A workflow the signal opens rather than tells (a case): its type, started
    # with `payload` as its input; None for a signal to a running workflow.
    start_workflow: str | None = None


@dataclass(frozen=True)
class Recorded:
    event_id: str
    duplicate: bool
    # What an order's workflow has still to hear of this event.
    signal: Signal | None = None


def from_sendgrid(
    *,
    event_id: str,
    event: str,
    occurred_at: datetime,
    message_key: str | None,
    sg_message_id: str | None,
    bounce_type: str | None,
    reason: str | None,
) -> ProviderEvent:
    delivery, suppression, detail = None, None, reason
    if event == "delivered":
        delivery = Delivery.DELIVERED
    elif event == "bounce":
        # 'blocked' is the receiving server refusing for now (reputation,
        # content): this mail is lost, the address is not.
        delivery = Delivery.BOUNCED
        detail = f"{bounce_type or 'bounce'}: {reason}" if reason else bounce_type or "bounce"
        if bounce_type != "blocked":
            suppression = "SendGrid bounce"
    elif event == "dropped":
        delivery = Delivery.DROPPED
        detail = f"dropped: {reason}" if reason else "dropped"
        if reason in SENDGRID_DROPPED_FOR_GOOD:
            suppression = f"SendGrid dropped: {reason}"
    elif event == "spamreport":
        delivery, suppression = Delivery.SPAM_REPORT, "SendGrid spam report"
    return ProviderEvent(
        provider="sendgrid",
        event_id=event_id,
        event=event,
        ledger_key=message_key,
        # sg_message_id is the X-Message-Id the send got, then SendGrid's own suffix.
        provider_message_id=sg_message_id.split(".", 1)[0] if sg_message_id else None,
        occurred_at=occurred_at,
        detail=_scrubbed(detail),
        delivery=delivery,
        suppression=suppression,
    )


def from_twilio(*, ledger_key: str, message_sid: str, status: str, error_code: int | None) -> ProviderEvent:
    delivery = TWILIO_DELIVERY.get(status)
    gone = delivery in NOT_DELIVERED and error_code in TWILIO_GONE_FOR_GOOD
    return ProviderEvent(
        provider="twilio",
        # A message reaches each status once; Twilio's retries repeat the pair.
        event_id=f"{message_sid}:{status}",
        event=status,
        ledger_key=ledger_key,
        provider_message_id=message_sid,
        occurred_at=None,
        detail=f"{status}: Twilio error {error_code}" if error_code else None,
        delivery=delivery,
        suppression=f"Twilio {error_code}" if gone else None,
    )


def unreadable(*, provider: str, event_id: str, what_was_wrong: str) -> ProviderEvent:
    """An event of a shape we cannot read: kept, so that a post repeated
    with it changes nothing, and an operator can see what was wrong (by
    field name: nothing it carried is kept). It is about no message."""
    return ProviderEvent(
        provider=provider,
        event_id=event_id,
        event=UNREADABLE,
        ledger_key=None,
        provider_message_id=None,
        occurred_at=None,
        detail=what_was_wrong[:REASON_LENGTH],
    )


def _scrubbed(text: str | None) -> str | None:
    return scrub(text)[:REASON_LENGTH] if text else None


# The ledger row an event is about: by its key or, when that matches none (a
# status callback whose key a proxy re-encoded), by the provider's message id.
OUR_KEY = """
SELECT key FROM message_ledger
WHERE provider = $2 AND (key = $1 OR ($3::text IS NOT NULL AND provider_message_id = $3))
ORDER BY key = $1 DESC NULLS LAST
LIMIT 1
"""

INSERT_EVENT = """
INSERT INTO provider_events (provider, event_id, event, ledger_key, provider_message_id, detail, occurred_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (provider, event_id) DO NOTHING
RETURNING 1
"""

# A repeat of an event whose order has not heard of it yet.
UNSIGNALLED = """
SELECT workflow_id, signal_name, signal, start_workflow FROM provider_events
WHERE provider = $1 AND event_id = $2 AND signal IS NOT NULL AND signalled_at IS NULL
"""

# Read before the event changes it: a mail in doubt with no settlement to
# come has flagged its order, which the event must now tell.
LEDGER_BEFORE = "SELECT state = 'in_doubt' AND settle_at IS NULL FROM message_ledger WHERE key = $1 AND provider = $2 FOR UPDATE"

# Every expression reads the row as it was. Only the provider that sent the
# message can report on it.
APPLY_TO_LEDGER = """
UPDATE message_ledger
SET state = CASE WHEN state IN ('sending', 'in_doubt') THEN 'sent' ELSE state END,
    provider_message_id = CASE WHEN state IN ('sending', 'in_doubt') THEN coalesce(provider_message_id, $3)
                               ELSE provider_message_id END,
    sent_at = CASE WHEN state IN ('sending', 'in_doubt') THEN now() ELSE sent_at END,
    claim_token = CASE WHEN state IN ('sending', 'in_doubt') THEN NULL ELSE claim_token END,
    lease_until = CASE WHEN state IN ('sending', 'in_doubt') THEN NULL ELSE lease_until END,
    delivery = CASE WHEN $4::text IS NULL OR ($4 = 'delivered' AND delivery IS NOT NULL) THEN delivery ELSE $4 END,
    delivery_at = CASE WHEN $4::text IS NULL OR ($4 = 'delivered' AND delivery IS NOT NULL) THEN delivery_at
                       ELSE coalesce($5, now()) END,
    updated_at = now()
WHERE key = $1 AND provider = $2
RETURNING order_id, kind, channel, recipient, provider_message_id
"""

KEEP_SIGNAL = """
UPDATE provider_events SET workflow_id = $3, signal_name = $4, signal = $5::jsonb WHERE provider = $1 AND event_id = $2
"""

# Signals still owed and not claimed by a relay, oldest first (those of one
# post when it names them), claimed for a while: another replica skips what
# one is delivering, and none holds a lock while it calls Temporal.
CLAIM_OWED = """
UPDATE provider_events e SET claimed_until = now() + make_interval(secs => $4)
FROM (
    SELECT provider, event_id FROM provider_events
    WHERE signal IS NOT NULL AND signalled_at IS NULL AND (claimed_until IS NULL OR claimed_until < now())
      AND ($2::text IS NULL OR provider = $2) AND ($3::text[] IS NULL OR event_id = ANY($3))
    ORDER BY received_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
) owed
WHERE e.provider = owed.provider AND e.event_id = owed.event_id
RETURNING e.provider, e.event_id, e.workflow_id, e.signal_name, e.signal, e.start_workflow, e.received_at
"""

RELEASE = "UPDATE provider_events SET claimed_until = NULL WHERE provider = $1 AND event_id = ANY($2::text[])"

SIGNALLED = """
UPDATE provider_events SET signalled_at = now(), workflow_ended = $3, claimed_until = NULL
WHERE provider = $1 AND event_id = ANY($2::text[])
"""


async def record(conn: asyncpg.Connection, event: ProviderEvent) -> Recorded:
    """Keep the event and apply it, in the caller's transaction; a repeat
    applies nothing, but brings back a signal still owed."""
    if event.ledger_key is not None or event.provider_message_id is not None:
        ours = await conn.fetchval(OUR_KEY, event.ledger_key, event.provider, event.provider_message_id)
        event = replace(event, ledger_key=ours or event.ledger_key)
    inserted = await conn.fetchval(
        INSERT_EVENT,
        event.provider,
        event.event_id,
        event.event,
        event.ledger_key,
        event.provider_message_id,
        event.detail,
        event.occurred_at,
    )
    if not inserted:
        owed = await conn.fetchrow(UNSIGNALLED, event.provider, event.event_id)
        return Recorded(event.event_id, duplicate=True, signal=_signal(owed) if owed else None)
    if event.ledger_key is None:
        return Recorded(event.event_id, duplicate=False)
    flagged_in_doubt = await conn.fetchval(LEDGER_BEFORE, event.ledger_key, event.provider)
    row = await conn.fetchrow(
        APPLY_TO_LEDGER,
        event.ledger_key,
        event.provider,
        event.provider_message_id,
        event.delivery.value if event.delivery else None,
        event.occurred_at,
    )
    if row is None:  # a key we never sent (another deployment's, or long deleted)
        return Recorded(event.event_id, duplicate=False)
    # A row blanked by retention no longer knows its recipient: nothing to suppress.
    if event.suppression and row["recipient"] is not None:
        await suppress(conn, Channel(row["channel"]), row["recipient"], reason=event.suppression, source="provider")
    if row["order_id"] is None or not event.ledger_key.startswith(LedgerKey.order_prefix(row["order_id"])):
        # The customer's journey's, a case's, a mail to staff: no order to tell.
        return Recorded(event.event_id, duplicate=False)
    if event.delivery in NOT_DELIVERED:  # the order hands it over, and lifts an in-doubt flag
        report = MessageUndelivered(kind=row["kind"], channel=row["channel"], event=event.delivery.value, reason=event.detail)
        signal = Signal(workflow_id_for(row["order_id"]), UNDELIVERED_SIGNAL, report.model_dump(mode="json"))
    elif flagged_in_doubt:
        outcome = MessageOutcome(
            key=event.ledger_key, channel=row["channel"], state=DeliveryState.SENT, provider_message_id=row["provider_message_id"]
        )
        signal = Signal(workflow_id_for(row["order_id"]), SETTLED_SIGNAL, outcome.model_dump(mode="json"))
    else:
        return Recorded(event.event_id, duplicate=False)
    await conn.execute(
        KEEP_SIGNAL, event.provider, event.event_id, signal.workflow_id, signal.name, json.dumps(signal.payload)
    )
    return Recorded(event.event_id, duplicate=False, signal=signal)


def _signal(row: asyncpg.Record) -> Signal:
    return Signal(row["workflow_id"], row["signal_name"], json.loads(row["signal"]), row["start_workflow"])


INSERT_OWED = """
INSERT INTO provider_events (provider, event_id, event, workflow_id, signal_name, signal, start_workflow)
VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7)
ON CONFLICT (provider, event_id) DO NOTHING
RETURNING 1
"""
RECORDED_SIGNAL = "SELECT workflow_id, signal_name, signal, start_workflow FROM provider_events WHERE provider = $1 AND event_id = $2"


async def owe(conn: asyncpg.Connection, event_id: str, signal: Signal) -> tuple[bool, Signal]:
    """What a customer submitted (`event_id` names it: one per order, per
    message), kept with the signal it owes, for the relay to deliver as it
    does providers'. A repeat records nothing: it gets False and the signal
    the first recorded."""
    inserted = await conn.fetchval(
        INSERT_OWED, CUSTOMER, event_id, signal.name, signal.workflow_id, signal.name, json.dumps(signal.payload), signal.start_workflow
    )
    if inserted:
        return True, signal
    return False, _signal(await conn.fetchrow(RECORDED_SIGNAL, CUSTOMER, event_id))


@dataclass(frozen=True)
class OwedSignal:
    provider: str
    event_id: str
    signal: Signal


async def claim_owed(
    conn: asyncpg.Connection,
    limit: int,
    claim_for: float,
    provider: str | None = None,
    event_ids: Sequence[str] | None = None,
) -> list[OwedSignal]:
    """Signals still owed that no relay is delivering, claimed for
    `claim_for` seconds, oldest first: replicas at once each get others."""
    rows = await conn.fetch(CLAIM_OWED, limit, provider, list(event_ids) if event_ids is not None else None, claim_for)
    return [OwedSignal(r["provider"], r["event_id"], _signal(r)) for r in sorted(rows, key=lambda r: r["received_at"])]


async def release(conn: asyncpg.Connection, items: Sequence[OwedSignal]) -> None:
    """Not delivered now (Temporal away): the next pass, any replica's, takes them."""
    for provider in {i.provider for i in items}:
        await conn.execute(RELEASE, provider, [i.event_id for i in items if i.provider == provider])


async def count_owed(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    return await conn.fetchval("SELECT count(*) FROM provider_events WHERE signal IS NOT NULL AND signalled_at IS NULL")


async def mark_signalled(conn: asyncpg.Connection, delivered: Sequence[OwedSignal], ended: Sequence[OwedSignal]) -> None:
    """`ended`: the workflow was over, so no one took the signal up."""
    for items, workflow_ended in ((delivered, False), (ended, True)):
        for provider in {i.provider for i in items}:
            await conn.execute(SIGNALLED, provider, [i.event_id for i in items if i.provider == provider], workflow_ended)
