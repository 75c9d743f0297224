"""What customers answer through the HTTP service's pages (web/answers.py),
read and written in the caller's transaction: the order a feedback link
rates, and "Was this helpful?" votes, one per message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg


@dataclass(frozen=True)
class OrderToRate:
    order_id: str
    customer_id: str
    seller_id: str
    seller_name: str
    # (sku, name), in the order's own order, each sku once.
    items: list[tuple[str, str]]


@dataclass(frozen=True)
class VotedMessage:
    """The message a vote link names, and its vote so far."""

    ledger_key: str
    order_id: str | None
    customer_id: str | None
    kind: str
    channel: str
    helpful: bool | None
    comment: str | None


async def order_to_rate(conn: asyncpg.Connection, order_id: str) -> OrderToRate | None:
    order = await conn.fetchrow("SELECT customer_id, seller_id, seller_name FROM orders WHERE order_id = $1", order_id)
    if order is None:
        return None
    rows = await conn.fetch(
        "SELECT DISTINCT ON (sku) sku, name, line_no FROM order_items WHERE order_id = $1 ORDER BY sku, line_no", order_id
    )
    items = [(r["sku"], r["name"]) for r in sorted(rows, key=lambda r: r["line_no"])]
    return OrderToRate(order_id, order["customer_id"], order["seller_id"], order["seller_name"], items)


async def stored_feedback(conn: asyncpg.Connection, order_id: str) -> dict[str, Any] | None:
    """The order's feedback as its workflow stored it, in feedback_submitted's
    shape; None before it did."""
    row = await conn.fetchrow("SELECT item_rating, seller_rating, comment FROM feedback WHERE order_id = $1", order_id)
    if row is None:
        return None
    stars = await conn.fetch("SELECT sku, rating FROM item_ratings WHERE order_id = $1", order_id)
    return {**dict(row), "item_ratings": {r["sku"]: r["rating"] for r in stars} or None}


LEDGER_ROW = """
SELECT l.key, l.order_id, l.customer_id, l.kind, l.channel, v.helpful, v.comment
FROM message_ledger l LEFT JOIN message_votes v ON v.ledger_key = l.key
WHERE l.key = $1
"""


async def voted_message(conn: asyncpg.Connection, ledger_key: str, *, for_update: bool = False) -> VotedMessage | None:
    row = await conn.fetchrow(LEDGER_ROW + (" FOR UPDATE OF l" if for_update else ""), ledger_key)
    if row is None:
        return None
    return VotedMessage(row["key"], row["order_id"], row["customer_id"], row["kind"], row["channel"], row["helpful"], row["comment"])


async def customer_erased(conn: asyncpg.Connection, customer_id: str | None) -> bool:
    """Whether the customer was forgotten: their old links then record
    nothing. FOR SHARE, so an answer and an erasure cannot cross."""
    if customer_id is None:  # staff mail
        return False
    return bool(await conn.fetchval("SELECT erased_at IS NOT NULL FROM customers WHERE customer_id = $1 FOR SHARE", customer_id))


async def record_vote(conn: asyncpg.Connection, message: VotedMessage, helpful: bool) -> bool:
    """The message's one vote; False, recording nothing, when it has one."""
    return bool(
        await conn.fetchval(
            """
            INSERT INTO message_votes (ledger_key, order_id, kind, channel, helpful) VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (ledger_key) DO NOTHING RETURNING true
            """,
            message.ledger_key,
            message.order_id,
            message.kind,
            message.channel,
            helpful,
        )
    )


async def record_comment(conn: asyncpg.Connection, ledger_key: str, comment: str) -> bool:
    """What was wrong, with a "no" vote, once; False when it has one already."""
    return bool(
        await conn.fetchval(
            """
            UPDATE message_votes SET comment = $2, commented_at = now()
            WHERE ledger_key = $1 AND NOT helpful AND comment IS NULL RETURNING true
            """,
            ledger_key,
            comment,
        )
    )
