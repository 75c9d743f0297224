"""A small hand-made week for the WOCAS report and the lifecycle metrics,
in a database of its own (the session's is shared with every other test),
and the figures it must give, computed by hand in the comments.

The report's period: 2030-01-08 to 2030-01-15 (UNTIL, exclusive); the one
before: 2030-01-01 to 2030-01-08."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from store.database import migrate

UNTIL = datetime(2030, 1, 15, tzinfo=timezone.utc)


def at(text: str) -> datetime:
    """'2030-01-09 10:00' in UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


@asynccontextmanager
async def private_database(database_url: str) -> AsyncIterator[str]:
    """A new, migrated database on the session's server; dropped after."""
    name = f"wocas_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        parts = urlsplit(database_url)
        url = urlunsplit(parts._replace(path=f"/{name}"))
        await migrate(url)
        try:
            yield url
        finally:
            await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    finally:
        await admin.close()


CUSTOMERS = ["c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8"]

# order_id, customer, seller, placed_at, status, delivery_method, paid_at, dispatched_at, delivered_at, pickup_missed_at
ORDERS = [
    ("o1", "c1", "S1", "2030-01-09 09:00", "open", "address", "2030-01-09 10:00", "2030-01-10 10:00", "2030-01-12 10:00", None),
    ("o2", "c2", "S1", "2030-01-02 09:00", "open", "address", "2030-01-02 10:00", "2030-01-03 00:00", "2030-01-08 10:00", None),
    ("o3", "c3", "S2", "2030-01-09 11:00", "open", "address", "2030-01-09 12:00", "2030-01-11 00:00", "2030-01-13 12:00", None),
    ("o4", "c1", "S2", "2029-12-20 09:00", "open", "address", None, None, None, None),
    ("o5", "c4", "S1", "2030-01-08 12:00", "open", "locker", "2030-01-08 12:00", "2030-01-08 18:00", "2030-01-10 18:00", "2030-01-13 18:00"),
    # For the lifecycle metrics (nothing else of the report's period):
    ("m5a", "c5", "S1", "2029-08-01 09:00", "open", "address", None, None, None, None),
    ("m5b", "c5", "S1", "2029-09-15 09:00", "open", "address", None, None, None, None),
    ("m6a", "c6", "S1", "2029-08-10 09:00", "open", "address", None, None, None, None),
    ("m6b", "c6", "S1", "2029-12-01 09:00", "open", "address", None, None, None, None),
    ("m7a", "c7", "S1", "2029-09-01 09:00", "open", "address", None, None, None, None),
    ("m7b", "c7", "S1", "2029-09-10 09:00", "cancelled", "address", None, None, None, None),
    ("m8a", "c8", "S1", "2029-06-01 09:00", "open", "address", None, None, None, None),
    ("m8b", "c8", "S1", "2029-08-01 09:00", "open", "address", None, None, None, None),
]
SELLER_NAMES = {"S1": "Alpha Lights", "S2": "Beta Kitchen"}

# order_id, line_no, sku, name, category
ITEMS = [
    ("o1", 1, "A", "Lamp", "lighting"),
    ("o1", 2, "B", "Mug", "kitchen"),
    ("o2", 1, "A", "Lamp", "lighting"),
    ("o3", 1, "B", "Mug", "kitchen"),
    ("o3", 2, "C", "Pan", "kitchen"),
    ("o4", 1, "C", "Pan", "kitchen"),
    ("o5", 1, "A", "Lamp", "lighting"),
]

# order_id, item_rating, seller_rating, comment, received_at; then the item ratings
FEEDBACK = [
    ("o1", 4, 5, "Great lamp, box damaged though", "2030-01-10 08:00", {"A": 4, "B": 2}),
    ("o2", 2, 3, "Box was damaged, the lamp arrived broken", "2030-01-03 08:00", {"A": 2}),
    ("o3", 1, 1, "The box was damaged and the pan arrived broken", "2030-01-11 08:00", {"B": 1, "C": 1}),
    ("o4", 5, 5, "Box damaged box damaged", "2029-12-21 08:00", {"C": 5}),
]

# ledger_key, order_id, kind, channel, helpful, comment, voted_at
VOTES = [
    ("k1", "o1", "dispatch_notice", "email", True, None, "2030-01-09 12:00"),
    ("k2", "o1", "dispatch_notice", "email", False, "Tracking link broken and box damaged", "2030-01-10 12:00"),
    ("k3", "o3", "order_confirmation", "email", True, None, "2030-01-12 12:00"),
    ("k4", "o2", "dispatch_notice", "email", True, None, "2030-01-04 12:00"),
    ("k5", "o2", "dispatch_notice", "email", False, "late", "2030-01-05 12:00"),
]

# case_id, order_id, n, trigger, owner, status, escalation_level, due_at, opened_at, resolved_at, sla_breaches, text
CASES = [
    ("case-o3-1", "o3", 1, "low_rating", "kitchen-team", "escalated", 2, "2030-01-12 10:00", "2030-01-11 09:00", None, 2, None),
    ("case-o2-1", "o2", 1, "complaint", "lighting-team", "open", 0, "2030-01-16 00:00", "2030-01-12 09:00", None, 0,
     "Complaint: box damaged, lamp arrived broken!"),
    ("case-o1-1", "o1", 1, "not_helpful", "kitchen-team", "acknowledged", 0, None, "2030-01-09 13:00", None, 0, None),
    ("case-o2-2", "o2", 2, "complaint", "lighting-team", "resolved", 1, None, "2030-01-02 09:00", "2030-01-10 09:00", 1, None),
    ("case-o4-1", "o4", 1, "low_rating", None, "open", 0, "2030-01-14 00:00", "2030-01-13 09:00", None, 0, None),
]

# key, order_id, kind, channel, state, sent_at, delivery, created_at
LEDGER = [
    ("l1", "o1", "order_confirmation", "email", "sent", "2030-01-09 09:01", "delivered", "2030-01-09 09:01"),
    ("l2", "o3", "order_confirmation", "email", "sent", "2030-01-09 11:01", "delivered", "2030-01-09 11:01"),
    ("l3", "o5", "order_confirmation", "email", "sent", "2030-01-08 12:01", "bounced", "2030-01-08 12:01"),
    ("l4", "o5", "payment_confirmation", "email", "sent", "2030-01-08 12:02", None, "2030-01-08 12:02"),
    ("l5", "o1", "dispatch_notice", "sms", "sent", "2030-01-10 10:01", "delivered", "2030-01-10 10:01"),
    ("l6", "o3", "dispatch_notice", "sms", "sent", "2030-01-11 00:01", "undelivered", "2030-01-11 00:01"),
    ("l7", "o2", "order_confirmation", "email", "sent", "2030-01-05 00:00", "delivered", "2030-01-05 00:00"),
    ("l8", "o1", "payment_confirmation", "email", "failed", None, None, "2030-01-09 10:01"),
    # Deadline touchpoints (their send state does not matter):
    ("b1", "o1", "dispatch_delayed", "email", "pending", None, None, "2030-01-10 09:00"),
    ("b2", "o1", "dispatch_delayed", "sms", "pending", None, None, "2030-01-10 09:00"),
    ("b3", "o3", "delivery_delayed", "email", "pending", None, None, "2030-01-12 09:00"),
    ("b4", "o2", "dispatch_delayed", "email", "pending", None, None, "2030-01-03 09:00"),
    ("b5", "o4", "parcel_lost", "email", "pending", None, None, "2030-01-13 09:00"),
]

# customer, phase, at
PHASES = [
    ("c1", "new", "2029-12-20 09:00"), ("c1", "active", "2030-01-09 09:00"), ("c1", "loyal", "2030-01-12 10:00"),
    ("c2", "new", "2030-01-02 09:00"),
    ("c5", "new", "2029-08-01 09:00"), ("c5", "active", "2029-09-15 09:00"), ("c5", "loyal", "2030-01-20 00:00"),
    ("c6", "new", "2029-08-10 09:00"), ("c6", "lapsed", "2029-11-01 00:00"),
    ("c8", "loyal", "2029-09-01 00:00"),
]

# customer, lapse_no, grp, lapsed_at, reordered_at
WIN_BACKS = [
    ("c6", 1, "treated", "2029-11-01 00:00", "2029-12-01 09:00"),
    ("c8", 1, "treated", "2029-03-01 00:00", None),
    ("c7", 1, "holdout", "2029-12-01 00:00", None),
    ("h1", 1, "holdout", "2029-10-01 00:00", "2030-01-20 00:00"),
    ("h2", 1, "holdout", "2029-06-01 00:00", "2029-07-01 00:00"),
    ("h3", 1, "holdout", "2028-12-01 00:00", "2028-12-10 00:00"),
]


def _t(text: str | None) -> datetime | None:
    return None if text is None else at(text)


async def load(conn: asyncpg.Connection) -> None:
    await conn.executemany(
        "INSERT INTO customers (customer_id, name, email, timezone) VALUES ($1, $1, $1 || '@example.com', 'UTC')",
        [(c,) for c in CUSTOMERS],
    )
    await conn.executemany(
        "INSERT INTO orders (order_id, customer_id, seller_id, seller_name, placed_at, currency, total, delivery_method, status, "
        "paid_at, dispatched_at, delivered_at, pickup_missed_at) VALUES ($1, $2, $3, $4, $5, 'EUR', 10, $6, $7, $8, $9, $10, $11)",
        [
            (o, c, s, SELLER_NAMES[s], at(placed), method, status, _t(paid), _t(dispatched), _t(delivered), _t(missed))
            for o, c, s, placed, status, method, paid, dispatched, delivered, missed in ORDERS
        ],
    )
    await conn.executemany(
        "INSERT INTO order_items (order_id, line_no, sku, name, category, quantity, unit_price) VALUES ($1, $2, $3, $4, $5, 1, 10)",
        ITEMS,
    )
    orders = {o[0]: o for o in ORDERS}
    for order_id, item, seller, comment, received, ratings in FEEDBACK:
        await conn.execute(
            "INSERT INTO feedback (order_id, customer_id, seller_id, skus, item_rating, seller_rating, comment, received_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            order_id, orders[order_id][1], orders[order_id][2], list(ratings), item, seller, comment, at(received),
        )
        await conn.executemany(
            "INSERT INTO item_ratings (order_id, sku, rating) VALUES ($1, $2, $3)", [(order_id, s, r) for s, r in ratings.items()]
        )
    await conn.executemany(
        "INSERT INTO message_votes (ledger_key, order_id, kind, channel, helpful, comment, voted_at, commented_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        [(k, o, kind, ch, h, c, at(v), at(v) if c else None) for k, o, kind, ch, h, c, v in VOTES],
    )
    await conn.executemany(
        "INSERT INTO cases (case_id, order_id, n, trigger, trigger_key, customer_id, seller_id, owner, status, escalation_level, "
        "due_at, opened_at, resolved_at, sla_breaches, text) VALUES ($1, $2, $3, $4, $1, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        [
            (cid, o, n, trig, orders[o][1], orders[o][2], owner, status, level, _t(due), at(opened), _t(resolved), sla, text)
            for cid, o, n, trig, owner, status, level, due, opened, resolved, sla, text in CASES
        ],
    )
    await conn.executemany(
        "INSERT INTO message_ledger (key, order_id, kind, channel, recipient, state, sent_at, delivery, created_at) "
        "VALUES ($1, $2, $3, $4, 'someone', $5, $6, $7, $8)",
        [(k, o, kind, ch, st, _t(sent), d, at(created)) for k, o, kind, ch, st, sent, d, created in LEDGER],
    )
    await conn.executemany(
        "INSERT INTO customer_phase_changes (customer_id, phase, at) VALUES ($1, $2, $3)", [(c, p, at(t)) for c, p, t in PHASES]
    )
    await conn.executemany(
        "INSERT INTO win_backs (customer_id, lapse_no, grp, lapsed_at, reordered_at) VALUES ($1, $2, $3, $4, $5)",
        [(c, n, g, at(lapsed), _t(re)) for c, n, g, lapsed, re in WIN_BACKS],
    )
