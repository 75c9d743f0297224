"""The customer's journey in PostgreSQL: its starting state, coupons issued
once per milestone, and the phase changes `orders lifecycle report` reads."""

from __future__ import annotations

import secrets
from datetime import datetime

import asyncpg

from workflows.models import (
    Coupon,
    CouponRequest,
    CustomerPhase,
    CustomerState,
    LifecycleSettings,
    OrderFacts,
    PhaseChange,
)

# Coupon codes: short, unambiguous when read aloud or typed from an SMS.
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"

ISSUE_COUPON = """
INSERT INTO coupons (code, customer_id, milestone, discount_percent, free_shipping, issued_at, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (customer_id, milestone) DO NOTHING
"""

RECORD_PHASE = """
INSERT INTO customer_phase_changes (customer_id, phase, at, order_id) VALUES ($1, $2, $3, $4)
ON CONFLICT DO NOTHING
"""

START_WIN_BACK = """
INSERT INTO win_backs (customer_id, lapse_no, grp, lapsed_at, coupon_code) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (customer_id, lapse_no) DO NOTHING
"""


async def starting_state(conn: asyncpg.Connection, customer_id: str, settings: LifecycleSettings, now: datetime) -> CustomerState:
    """A customer's state as PostgreSQL has it, for a workflow starting now:
    their timezone and whether they have a phone, orders placed (this one
    included) or delivered within the loyalty window, the phase those make,
    and milestones already rewarded."""
    since = now - settings.loyal_window
    rows = await conn.fetch(
        """
        SELECT o.order_id, o.placed_at, o.total, o.status, o.delivered_at
        FROM orders o WHERE o.customer_id = $1 AND (o.placed_at >= $2 OR o.delivered_at >= $2)
        ORDER BY o.placed_at
        """,
        customer_id,
        since,
    )
    totals = await conn.fetchrow(
        """
        SELECT count(*) AS n, max(placed_at) AS last_at,
               (SELECT count(*) FROM coupons WHERE customer_id = $1 AND milestone = 'loyal') AS rewards,
               (SELECT count(*) FROM win_backs WHERE customer_id = $1) AS lapses,
               EXISTS (
                   SELECT 1 FROM message_ledger
                   WHERE customer_id = $1 AND message_class = 'marketing' AND kind = 'welcome' AND state = 'sent'
               ) AS welcomed,
               (SELECT timezone FROM customers WHERE customer_id = $1) AS timezone,
               coalesce((SELECT phone IS NOT NULL FROM customers WHERE customer_id = $1), false) AS has_phone
        FROM orders WHERE customer_id = $1
        """,
        customer_id,
    )
    orders = {
        r["order_id"]: OrderFacts(
            order_id=r["order_id"],
            placed_at=r["placed_at"],
            total=r["total"],
            delivered_at=r["delivered_at"],
            status="cancelled" if r["status"] == "cancelled" else "delivered" if r["delivered_at"] else "placed",
        )
        for r in rows
    }
    state = CustomerState(
        customer_id=customer_id,
        settings=settings,
        phase_since=now,
        timezone=totals["timezone"] or "UTC",
        has_phone=totals["has_phone"],
        orders=orders,
        orders_total=totals["n"],
        last_order_at=totals["last_at"],
        welcomed=totals["welcomed"],
        loyalty_rewards=totals["rewards"],
        lapses=totals["lapses"],
    )
    state.phase = state.qualified_phase(now)
    return state


def new_coupon_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(10))


async def issue_coupon(conn: asyncpg.Connection, request: CouponRequest) -> Coupon:
    """The milestone's coupon, created on the first call and returned as it
    is by every later one."""
    t = request.terms
    await conn.execute(
        ISSUE_COUPON,
        new_coupon_code(),
        request.customer_id,
        request.milestone,
        t.discount_percent,
        t.free_shipping,
        request.issued_at,
        request.issued_at + t.valid_for,
    )
    row = await conn.fetchrow(
        "SELECT code, discount_percent, free_shipping, issued_at, expires_at FROM coupons "
        "WHERE customer_id = $1 AND milestone = $2",
        request.customer_id,
        request.milestone,
    )
    terms = t.model_copy(
        update={
            "discount_percent": row["discount_percent"],
            "free_shipping": row["free_shipping"],
            "valid_for": row["expires_at"] - row["issued_at"],
        }
    )
    return Coupon(code=row["code"], terms=terms, expires_at=row["expires_at"])


async def record_phase(conn: asyncpg.Connection, change: PhaseChange) -> None:
    """The change, and the win-back it starts or ends; a repeated change is
    the same rows. Call in a transaction."""
    await conn.execute(RECORD_PHASE, change.customer_id, change.phase.value, change.at, change.order_id)
    if change.phase is CustomerPhase.LAPSED:
        await conn.execute(
            START_WIN_BACK, change.customer_id, change.lapse_no, change.win_back_group, change.at, change.coupon_code
        )
    elif change.lapse_no is not None and change.phase is CustomerPhase.CHURNED:
        await conn.execute(
            "UPDATE win_backs SET churned_at = $3 WHERE customer_id = $1 AND lapse_no = $2 AND churned_at IS NULL",
            change.customer_id,
            change.lapse_no,
            change.at,
        )
    elif change.lapse_no is not None:  # back after a lapse
        await conn.execute(
            """
            UPDATE win_backs SET reordered_order_id = $3, reordered_at = $4
            WHERE customer_id = $1 AND lapse_no = $2 AND reordered_at IS NULL
            """,
            change.customer_id,
            change.lapse_no,
            change.order_id,
            change.at,
        )
