"""Cases in PostgreSQL (`cases`, migration 015): opened once per trigger,
numbered per order, and kept up to date by the case's workflow
(workflows/case_handling.py) at each transition."""

from __future__ import annotations

import asyncpg

from workflows.models import CaseOpening, CaseRecord, CaseTriggerKind, case_workflow_id


class OrderNotRecorded(LookupError):
    """A case needs its order's customer, seller and category."""


# Two triggers of one order at once take their numbers in turn.
LOCK_ORDER_CASES = "SELECT pg_advisory_xact_lock(hashtext('cases:' || $1))"

OPENED = """
SELECT case_id, order_id, n, trigger, customer_id, seller_id, category, text, opened_at
FROM cases WHERE trigger_key = $1
"""

# The order's customer and seller, and the category of its first item.
ORDER_PARTIES = """
SELECT o.customer_id, o.seller_id,
       (SELECT category FROM order_items i WHERE i.order_id = o.order_id ORDER BY line_no LIMIT 1) AS category
FROM orders o WHERE o.order_id = $1
"""

INSERT = """
INSERT INTO cases (case_id, order_id, n, trigger, trigger_key, customer_id, seller_id, category, text)
SELECT $1 || (coalesce(max(n), 0) + 1)::text, $2, coalesce(max(n), 0) + 1, $3, $4, $5, $6, $7, $8
FROM cases WHERE order_id = $2
RETURNING case_id, order_id, n, trigger, customer_id, seller_id, category, text, opened_at
"""

# The customer's words (and a resolution, which may quote them) are not
# written back once the customer was erased (store/erasure.py); the case
# hears it in the answer, and closes. FOR SHARE: a record that waited for an
# erasure's transaction reads the customer as that left them.
UPDATE = """
WITH customer AS (
    SELECT c.erased_at IS NOT NULL AS erased FROM cases k JOIN customers c USING (customer_id) WHERE k.case_id = $1
    FOR SHARE OF c
)
UPDATE cases SET status = $2, owner = $3, escalation_level = $4, due_at = $5, acknowledged_at = $6, resolved_at = $7,
                 resolution = CASE WHEN (SELECT erased FROM customer) THEN NULL ELSE $8 END, resolved_by = $9,
                 reopened_at = $10, reopen_comment = CASE WHEN (SELECT erased FROM customer) THEN NULL ELSE $11 END,
                 sla_breaches = $12, closed_reason = $13
WHERE case_id = $1
RETURNING coalesce((SELECT erased FROM customer), false)
"""


async def open_case(
    conn: asyncpg.Connection, *, order_id: str, trigger: CaseTriggerKind, trigger_key: str, text: str | None
) -> CaseOpening:
    """The case `trigger_key` opens: a new row with the order's next number,
    or the one that key opened already. Raises OrderNotRecorded."""
    async with conn.transaction():
        await conn.execute(LOCK_ORDER_CASES, order_id)
        row = await conn.fetchrow(OPENED, trigger_key)
        if row is None:
            parties = await conn.fetchrow(ORDER_PARTIES, order_id)
            if parties is None:
                raise OrderNotRecorded(f"order {order_id} is not recorded: no case can be opened for it")
            prefix = case_workflow_id(order_id, 0)[:-1]
            row = await conn.fetchrow(
                INSERT, prefix, order_id, trigger, trigger_key, parties["customer_id"], parties["seller_id"],
                parties["category"], text,
            )
    return CaseOpening(**dict(row))


async def record_case(conn: asyncpg.Connection | asyncpg.Pool, record: CaseRecord) -> bool:
    """Whether the case's customer was erased."""
    return bool(await conn.fetchval(
        UPDATE, record.case_id, record.status.value, record.owner, record.escalation_level, record.due_at,
        record.acknowledged_at, record.resolved_at, record.resolution, record.resolved_by, record.reopened_at,
        record.reopen_comment, record.sla_breaches, record.closed_reason,
    ))
