"""Consent and suppression in PostgreSQL: read when a message is sent,
changed by checkout, the unsubscribe link, SMS keywords and provider errors,
each change with an audit row.

No consent row means: transactional messages go, marketing does not.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

from workflows.models import Channel, MarketingConsent, MessageClass

# consent.updated_at is the `at` of the row's last audit row. A choice made
# at $7 applies only if made after it (checked on the row the upsert locks,
# so a change committed meanwhile is seen); one made now (NULL) always does.
SET_CONSENT = """
WITH changed AS (
    INSERT INTO consent (customer_id, message_class, channel, granted, updated_at)
    VALUES ($1, $2, $3, $4, coalesce($7, now()))
    ON CONFLICT (customer_id, message_class, channel) DO UPDATE
    SET granted = EXCLUDED.granted, updated_at = EXCLUDED.updated_at
    WHERE consent.granted IS DISTINCT FROM EXCLUDED.granted AND ($7::timestamptz IS NULL OR consent.updated_at < $7)
    RETURNING granted, updated_at
)
INSERT INTO consent_audit (customer_id, message_class, channel, granted, source, detail, at)
SELECT $1, $2, $3, $4, $5, $6, updated_at FROM changed
RETURNING id
"""


async def refusal(
    conn: asyncpg.Connection | asyncpg.Pool, customer_id: str, klass: MessageClass, channel: Channel, recipient: str
) -> str | None:
    """Why this message may not go to `recipient` now, or None when it may:
    CUSTOMER_ERASED first, for a customer forgotten on request. The rule is
    PostgreSQL's message_refusal (migration 021), which registering a new
    message reads too (activities/messaging.py)."""
    return await conn.fetchval("SELECT message_refusal($1, $2, $3, $4)", customer_id, klass.value, channel.value, recipient)


async def set_consent(
    conn: asyncpg.Connection,
    customer_id: str,
    klass: MessageClass,
    channel: Channel,
    granted: bool,
    *,
    source: str,
    detail: str | None = None,
    made_at: datetime | None = None,
) -> bool:
    """Record a change, with its audit row; False (and no row) when nothing
    changed, so a repeated opt-out is harmless. `made_at`: when the customer
    made this choice, if not now; it is recorded as of then, and not at all
    if a change was recorded since."""
    audit_id = await conn.fetchval(SET_CONSENT, customer_id, klass.value, channel.value, granted, source, detail, made_at)
    return audit_id is not None


async def record_checkout_consent(
    conn: asyncpg.Connection, customer_id: str, consent: MarketingConsent, order_id: str, placed_at: datetime
) -> None:
    """As of when the order was placed: a later change (an unsubscribe, or a
    later checkout stored first) stands."""
    for channel, granted in ((Channel.EMAIL, consent.email), (Channel.SMS, consent.sms)):
        if granted is not None:
            await set_consent(
                conn, customer_id, MessageClass.MARKETING, channel, granted, source="checkout", detail=order_id, made_at=placed_at
            )


async def suppress(conn: asyncpg.Connection, channel: Channel, recipient: str, *, reason: str, source: str) -> bool:
    """Nothing more goes to `recipient` on `channel`; False if it already was suppressed."""
    inserted = await conn.fetchval(
        """
        INSERT INTO suppressions (channel, recipient, reason, source) VALUES ($1, $2, $3, $4)
        ON CONFLICT (channel, recipient) DO NOTHING RETURNING 1
        """,
        channel.value,
        recipient,
        reason,
        source,
    )
    return inserted is not None


async def lift_suppression(conn: asyncpg.Connection, channel: Channel, recipient: str) -> bool:
    """Lifts it, whether kept in clear or, its customer erased, hashed."""
    deleted = await conn.fetchval(
        """
        WITH lifted AS (
            DELETE FROM suppressions WHERE channel = $1 AND recipient IN ($2, erasure_hash($1, $2)) RETURNING 1
        )
        SELECT count(*) > 0 FROM lifted
        """,
        channel.value,
        recipient,
    )
    return bool(deleted)


def _contact_column(channel: Channel) -> str:
    return "email" if channel is Channel.EMAIL else "phone"


async def customers_reached_at(conn: asyncpg.Connection, channel: Channel, recipient: str) -> list[str]:
    rows = await conn.fetch(f"SELECT customer_id FROM customers WHERE {_contact_column(channel)} = $1", recipient)
    return [r["customer_id"] for r in rows]


async def customers_sharing_address(conn: asyncpg.Connection, customer_id: str, channel: Channel) -> list[str]:
    """The customer and every other one at their address on `channel` (a
    guest checkout and a registered account, a household); none for a
    customer not recorded."""
    column = _contact_column(channel)
    rows = await conn.fetch(
        f"""
        SELECT other.customer_id FROM customers c
        JOIN customers other ON other.customer_id = c.customer_id OR other.{column} = c.{column}
        WHERE c.customer_id = $1 ORDER BY other.customer_id
        """,
        customer_id,
    )
    return [r["customer_id"] for r in rows]
