"""The right to erasure in PostgreSQL: a customer forgotten on request.

`forget` does it in one transaction, under a lock on the customer:

- `customers`: name 'erased', email '', phone NULL, `erased_at` set (every
  send reads it and refuses: activities/messaging.py);
- `orders.document`: the customer's name, email and phone and the postal
  address replaced (name and address lines 'erased', email
  erased@erased.invalid, a parcel locker's id 'erased' and its name
  removed: the order stays a valid OrderInput), and the cancellation's
  reason ('erased' where one was given);
- `consent_audit`: the detail of each change (which, how and when stay);
- the ledger and the outbox: recipients, subjects, bodies and headers of
  every message of the customer and their orders blanked; a message still
  'pending' ends 'not_permitted', "customer erased";
- their words: feedback and vote comments, cases' texts, reopen comments
  and resolutions, and the `comment` and `text` of the signals kept in
  `provider_events` for their orders, cases and customer workflow;
- their suppressions: each address or number they were suppressed at is
  kept only as a salted hash (`erasure_hash`, migration 018), which the
  send-time check also reads (store/consent.py), so an erased customer who
  said STOP is still never messaged at that number;
- what metrics need stays, anonymous: orders, totals, items, ratings,
  votes, cases' timings, phases, coupons, timestamps.

Each erasure leaves a row in `erasures` (receipt id, the customer id's salted
hash, by whom, when, rows changed per table; nothing personal) and owes
`customer_erased` to the customer's order workflows, customer workflow and
case workflows not closed yet (kept in `provider_events`, delivered by the
relay: web/signals.py); the receipt is complete once all are told. A
second request for a customer erased with nothing recorded since gets the
first receipt.

Crypto-shredding of Temporal history follows (web/erasures.py `settled`):
once every signal is delivered and every workflow of the customer
(`workflows`: those told, and their orders' and their cases') is closed,
their data keys are destroyed (codec/data_keys.py) and the erasure is
complete, with the count of keys in `erased` ("data_keys").
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from store import provider_events
from workflows.models import CUSTOMER_ERASED, customer_workflow_id, workflow_id_for
from workflows.resend import resend_workflow_id

ERASED_NAME = "erased"
ERASED_SIGNAL = "customer_erased"

LOCK_CUSTOMER = "SELECT pg_advisory_xact_lock(hashtext('erasure:' || $1::text))"

# A customer already forgotten, with nothing recorded about them since.
ALREADY_ERASED = """
SELECT e.receipt_id FROM customers c
JOIN erasures e ON e.customer_hash = erasure_hash('customer', c.customer_id)
WHERE c.customer_id = $1 AND c.erased_at IS NOT NULL AND c.updated_at <= c.erased_at
ORDER BY e.requested_at DESC LIMIT 1
"""

CUSTOMER_ORDERS = "SELECT order_id FROM orders WHERE customer_id = $1 ORDER BY order_id"

# Their cases whose workflow may still run: a resolved one waits out its
# reopen window (one found over, the relay leaves be).
CUSTOMER_CASES = """
SELECT case_id FROM cases WHERE (customer_id = $1 OR order_id = ANY($2::text[])) AND status <> 'closed' ORDER BY case_id
"""

# Every message of the customer: their journey's, their orders' and their cases'.
MESSAGES = "(customer_id = $1 OR order_id = ANY($2::text[]))"

# Where anything was ever sent to them, before it is blanked.
ADDRESSES = f"""
SELECT channel, recipient FROM message_ledger WHERE {MESSAGES} AND recipient <> '' AND message_class IS DISTINCT FROM 'staff'
UNION
SELECT 'email', email FROM customers WHERE customer_id = $1 AND email <> ''
UNION
SELECT 'sms', phone FROM customers WHERE customer_id = $1 AND phone IS NOT NULL
"""

HASH_SUPPRESSIONS = """
WITH gone AS (
    DELETE FROM suppressions s USING unnest($1::text[], $2::text[]) AS a(channel, recipient)
    WHERE s.channel = a.channel AND s.recipient = a.recipient
    RETURNING s.channel, s.recipient, s.reason, s.source, s.at
)
INSERT INTO suppressions (channel, recipient, reason, source, at)
SELECT channel, erasure_hash(channel, recipient), reason, source, at FROM gone
ON CONFLICT (channel, recipient) DO NOTHING
"""

SCRUB = {
    "customers": """
        UPDATE customers SET name = 'erased', email = '', phone = NULL, erased_at = now(), updated_at = now()
        WHERE customer_id = $1
    """,
    # The method (address or locker) stays where metrics read it
    # (delivery_method), and the address's country; the document keeps its
    # shape so that whatever reads it still can. A cancellation's reason is
    # the customer's words: whether one was given stays.
    "orders": """
        UPDATE orders SET document = jsonb_set(
            jsonb_set(document, '{customer}',
                      (document->'customer') || '{"name": "erased", "email": "erased@erased.invalid", "phone": null}'::jsonb),
            '{delivery}',
            CASE document->'delivery'->>'method'
                 WHEN 'address'
                 THEN jsonb_set(document->'delivery', '{address}',
                                jsonb_build_object('line1', 'erased', 'line2', null, 'city', 'erased',
                                                   'postal_code', 'erased',
                                                   'country', document->'delivery'->'address'->'country'))
                 WHEN 'locker'
                 THEN (document->'delivery') || '{"locker_id": "erased", "locker_name": null}'::jsonb
                 ELSE document->'delivery' END),
            cancellation_reason = CASE WHEN cancellation_reason IS NOT NULL THEN 'erased' END
        -- An order recorded without a document keeps none (jsonb_set of NULL is NULL).
        WHERE customer_id = $1
    """,
    "outbox": f"""
        UPDATE outbox SET recipient = '', subject = NULL, body = '', headers = NULL
        WHERE ledger_key IN (SELECT key FROM message_ledger WHERE {MESSAGES})
    """,
    "message_ledger": f"""
        UPDATE message_ledger SET recipient = '', subject = NULL, body_text = NULL, body_html = NULL, headers = NULL,
            -- As retention blanks it: never resent or settled, and retention leaves it be.
            blanked_at = coalesce(blanked_at, now()),
            state = CASE WHEN state = 'pending' THEN 'not_permitted' ELSE state END,
            error = CASE WHEN state = 'pending' THEN $3 ELSE error END,
            updated_at = now()
        WHERE {MESSAGES}
    """,
    # Which change, how and when stay; the detail (a keyword, an order id,
    # an operator's note) may say who.
    "consent_audit": "UPDATE consent_audit SET detail = NULL WHERE customer_id = $1 AND detail IS NOT NULL",
    "feedback": "UPDATE feedback SET comment = NULL WHERE (customer_id = $1 OR order_id = ANY($2::text[])) AND comment IS NOT NULL",
    "message_votes": f"""
        UPDATE message_votes SET comment = NULL
        WHERE comment IS NOT NULL
          AND (order_id = ANY($2::text[]) OR ledger_key IN (SELECT key FROM message_ledger WHERE {MESSAGES}))
    """,
    "cases": """
        UPDATE cases SET text = NULL, reopen_comment = NULL, resolution = NULL
        WHERE (customer_id = $1 OR order_id = ANY($2::text[]))
          AND (text IS NOT NULL OR reopen_comment IS NOT NULL OR resolution IS NOT NULL)
    """,
    "provider_events": """
        UPDATE provider_events SET signal = signal - 'comment' - 'text'
        WHERE (signal ? 'comment' OR signal ? 'text')
          AND workflow_id IN (SELECT 'order-' || o FROM unnest($2::text[]) o
                              UNION SELECT case_id FROM cases WHERE customer_id = $1 OR order_id = ANY($2::text[])
                              UNION SELECT 'customer-' || $1::text)
    """,
}

LOG = """
INSERT INTO erasures (receipt_id, customer_hash, requested_by, erased, completed_at)
VALUES ($1, erasure_hash('customer', $2), $3, $4::jsonb, CASE WHEN $5 THEN now() END)
"""

RECEIPT = "SELECT receipt_id, requested_by, requested_at, completed_at, erased FROM erasures WHERE receipt_id = $1"

COMPLETE = """
UPDATE erasures SET completed_at = now(), erased = erased || jsonb_build_object('data_keys', $2::int)
WHERE receipt_id = $1 AND completed_at IS NULL
"""
# Taken before the keys are shredded: one process completes an erasure.
STILL_INCOMPLETE = "SELECT true FROM erasures WHERE receipt_id = $1 AND completed_at IS NULL FOR UPDATE SKIP LOCKED"

INCOMPLETE = "SELECT receipt_id FROM erasures WHERE completed_at IS NULL ORDER BY requested_at LIMIT $1"

# The workflows the erasure told, every case of the customer or of their
# orders (found in `cases` by id, told or not), and each resend of one of
# their messages that ran (it has a data key).
WORKFLOWS = """
WITH told AS (
    SELECT workflow_id FROM provider_events WHERE provider = $1 AND event_id LIKE $2
), orders AS (
    SELECT substr(workflow_id, length($3) + 1) AS order_id FROM told WHERE starts_with(workflow_id, $3)
), customers AS (
    SELECT substr(workflow_id, length($4) + 1) AS customer_id FROM told WHERE starts_with(workflow_id, $4)
)
SELECT workflow_id FROM told
UNION
SELECT case_id FROM cases
WHERE order_id IN (SELECT order_id FROM orders) OR customer_id IN (SELECT customer_id FROM customers)
UNION
SELECT workflow_id FROM data_keys
WHERE workflow_id IN (SELECT $5 || key FROM message_ledger
                      WHERE order_id IN (SELECT order_id FROM orders) OR customer_id IN (SELECT customer_id FROM customers))
ORDER BY 1
"""


@dataclass(frozen=True)
class Receipt:
    receipt_id: str
    requested_by: str
    requested_at: datetime
    completed_at: datetime | None
    # Rows changed per table.
    erased: dict[str, int]

    def as_json(self) -> dict[str, Any]:
        return {
            "receipt_id": self.receipt_id,
            "state": "completed" if self.completed_at else "workflows_being_told",
            "requested_by": self.requested_by,
            "requested_at": self.requested_at.isoformat(),
            "completed_at": self.completed_at.isoformat() if self.completed_at else None,
            "erased": self.erased,
        }


@dataclass(frozen=True)
class Forgotten:
    receipt: Receipt
    # False: an earlier erasure's receipt, nothing done now.
    new: bool
    # The `customer_erased` signals owed, by event id, for the relay.
    owed_event_ids: list[str]


async def forget(conn: asyncpg.Connection, customer_id: str, requested_by: str) -> Forgotten:
    """Erase the customer's data in one transaction and log it; see the module."""
    async with conn.transaction():
        await conn.execute(LOCK_CUSTOMER, customer_id)
        earlier = await conn.fetchval(ALREADY_ERASED, customer_id)
        if earlier:
            return Forgotten(await receipt(conn, earlier), new=False, owed_event_ids=[])
        order_ids = [r["order_id"] for r in await conn.fetch(CUSTOMER_ORDERS, customer_id)]
        addresses = await conn.fetch(ADDRESSES, customer_id, order_ids)
        erased: dict[str, int] = {}
        if addresses:
            status = await conn.execute(HASH_SUPPRESSIONS, [a["channel"] for a in addresses], [a["recipient"] for a in addresses])
            erased["suppressions"] = rows_changed(status)
        # The outbox and votes find the messages by the ledger's customer and order: before the ledger is blanked.
        for table, statement in SCRUB.items():
            args = (customer_id, order_ids, CUSTOMER_ERASED) if "$3" in statement else (customer_id, order_ids) if "$2" in statement else (customer_id,)
            erased[table] = rows_changed(await conn.execute(statement, *args))
        receipt_id = f"er-{uuid.uuid4().hex}"
        cases = [r["case_id"] for r in await conn.fetch(CUSTOMER_CASES, customer_id, order_ids)]
        workflows = [workflow_id_for(o) for o in order_ids] + [customer_workflow_id(customer_id)] + cases
        owed = []
        for workflow_id in workflows:
            event_id = f"erasure:{receipt_id}:{workflow_id}"
            await provider_events.owe(conn, event_id, provider_events.Signal(workflow_id, ERASED_SIGNAL, {}))
            owed.append(event_id)
        await conn.execute(LOG, receipt_id, customer_id, requested_by, json.dumps(erased), False)
        return Forgotten(await receipt(conn, receipt_id), new=True, owed_event_ids=owed)


async def claim_completion(conn: asyncpg.Connection, receipt_id: str) -> bool:
    """In a transaction: whether this one completes the erasure (it is not
    complete, and no other process is completing it now)."""
    return bool(await conn.fetchval(STILL_INCOMPLETE, receipt_id))


async def complete(conn: asyncpg.Connection | asyncpg.Pool, receipt_id: str, data_keys: int = 0) -> None:
    """Every workflow told and closed, their data keys shredded: the erasure is complete."""
    await conn.execute(COMPLETE, receipt_id, data_keys)


async def incomplete(conn: asyncpg.Connection | asyncpg.Pool, limit: int = 100) -> list[str]:
    return [r["receipt_id"] for r in await conn.fetch(INCOMPLETE, limit)]


async def workflows(conn: asyncpg.Connection | asyncpg.Pool, receipt_id: str) -> list[str]:
    """Every workflow of the erased customer: whose data keys the erasure destroys."""
    rows = await conn.fetch(
        WORKFLOWS, provider_events.CUSTOMER, f"erasure:{receipt_id}:%", workflow_id_for(""), customer_workflow_id(""),
        resend_workflow_id(""),
    )
    return [r["workflow_id"] for r in rows]


async def receipt(conn: asyncpg.Connection | asyncpg.Pool, receipt_id: str) -> Receipt | None:
    row = await conn.fetchrow(RECEIPT, receipt_id)
    if row is None:
        return None
    return Receipt(row["receipt_id"], row["requested_by"], row["requested_at"], row["completed_at"], json.loads(row["erased"]))


async def pending_signals(conn: asyncpg.Connection | asyncpg.Pool, receipt_id: str) -> int:
    """The erasure's `customer_erased` signals not delivered yet."""
    return await conn.fetchval(
        "SELECT count(*) FROM provider_events WHERE provider = $1 AND event_id LIKE $2 AND signalled_at IS NULL",
        provider_events.CUSTOMER,
        f"erasure:{receipt_id}:%",
    )


async def told_at(conn: asyncpg.Connection | asyncpg.Pool, receipt_id: str) -> datetime | None:
    """When the erasure's last `customer_erased` was delivered (or found over)."""
    return await conn.fetchval(
        "SELECT max(signalled_at) FROM provider_events WHERE provider = $1 AND event_id LIKE $2",
        provider_events.CUSTOMER,
        f"erasure:{receipt_id}:%",
    )


async def close_cases(conn: asyncpg.Connection, workflow_ids: list[str]) -> None:
    """The erased customer's cases recorded closed: one terminated before it
    could close itself would otherwise stay open, and overdue, for ever."""
    await conn.execute(
        "UPDATE cases SET status = 'closed', closed_reason = $2, due_at = NULL WHERE case_id = ANY($1) AND status <> 'closed'",
        workflow_ids,
        CUSTOMER_ERASED,
    )


def rows_changed(status: str) -> int:
    """The row count of an UPDATE, DELETE or INSERT's status ('UPDATE 3', 'INSERT 0 3')."""
    return int(status.rsplit(" ", 1)[1])
