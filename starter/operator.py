"""The operator's commands: `orders attention` and `orders resend KEY`.

`attention` reads only what costs no Temporal Cloud action: the visibility
list of orders with NeedsAttention=true, the ledger's failed and in-doubt
messages, and the providers' reports of messages not delivered that came
after their order was over. It prints ids, states and ages, never a customer's address, number
or name (`orders status ID` gives an order's reasons; a query is billed).

`resend` checks the ledger, then runs the send on the worker as a
MessageResend workflow (workflows/resend.py), so the ledger records it and a
running order's status and flags follow.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

from providers.privacy import scrub
from starter.cli import UsageError
from workflows import search_attributes as sa
from workflows.models import MARKETING_TOUCHPOINTS, TASK_QUEUE, WORKFLOW_TYPE, MessageOutcome, MessageRequest, SendMode
from workflows.resend import RESEND_WORKFLOW_TYPE, resend_workflow_id

Database = asyncpg.Pool | asyncpg.Connection

FLAGGED_ORDERS = f'WorkflowType="{WORKFLOW_TYPE}" AND NeedsAttention=true'

# The latest first, with how many there are in all.
MESSAGES_NEEDING_ATTENTION = """
SELECT key, order_id, kind, channel, state, error, settle_at, now() - updated_at AS age, settle_at <= now() AS settle_due,
       count(*) OVER () AS total
FROM message_ledger WHERE state IN ('failed', 'in_doubt')
ORDER BY updated_at DESC LIMIT $1
"""

# Reports of order messages not delivered that came once the order was over:
# no workflow took them up. Kept in the list for a month; marketing (the
# recommendations) is left out: not worth a person reaching the customer.
REPORTED_AFTER_THE_ORDER = """
SELECT e.ledger_key AS key, l.order_id, l.kind, l.channel, l.delivery, e.detail, now() - e.received_at AS age,
       count(*) OVER () AS total
FROM provider_events e JOIN message_ledger l ON l.key = e.ledger_key
WHERE e.workflow_ended AND e.signal_name = 'message_undelivered' AND e.received_at > now() - interval '30 days'
  AND NOT l.kind = ANY($2::text[])
ORDER BY e.received_at DESC LIMIT $1
"""

MESSAGE = """
SELECT l.key, l.order_id, coalesce(l.customer_id, o.customer_id) AS customer_id, l.kind, l.channel, l.state,
       l.provider_message_id, l.settle_at, l.settle_at > now() AS settling_later, l.body_text IS NOT NULL AS rendered,
       l.blanked_at
FROM message_ledger l LEFT JOIN orders o USING (order_id) WHERE l.key = $1
"""

ERROR_SHOWN = 100


async def attention_report(client: Client, db: Database, limit: int = 100) -> str:
    now = datetime.now().astimezone()
    orders = [o async for o in client.list_workflows(FLAGGED_ORDERS, limit=limit)]
    more = " or more" if len(orders) == limit else ""
    lines = [f"Orders needing attention (NeedsAttention=true), latest first: {len(orders)}{more}; `orders status ID` gives the reasons"]
    for o in orders:
        status = o.typed_search_attributes.get(sa.ORDER_STATUS) or "?"
        run = o.status.name.lower() if o.status else "?"
        lines.append(f"  {o.id.removeprefix('order-'):<24} {status:<17} {run:<10} placed {age(now - o.start_time)} ago")
    lines += message_lines(
        "Messages failed or in doubt: {}; `orders resend KEY` sends one once more",
        await db.fetch(MESSAGES_NEEDING_ATTENTION, limit), "state", note,
    )
    lines += message_lines(
        "Messages reported not delivered after their order was over, last 30 days: {}",
        await db.fetch(REPORTED_AFTER_THE_ORDER, limit, [kind.value for kind in MARKETING_TOUCHPOINTS]),
        "delivery", lambda r: scrub(r["detail"] or "")[:ERROR_SHOWN],
    )
    return "\n".join(lines)


def message_lines(heading: str, rows: list[asyncpg.Record], state: str, why: Callable[[asyncpg.Record], str]) -> list[str]:
    """A heading with how many there are in all, then a line for each row
    (the latest first): ledger key, order, touchpoint, channel, `state`, age, `why`."""
    total = rows[0]["total"] if rows else 0
    shown = f" (the latest {len(rows)})" if total > len(rows) else ""
    return [heading.format(f"{total}{shown}")] + [
        f"  {r['key']:<56} {r['order_id'] or '-':<24} {r['kind']:<22} {r['channel']:<5} {r[state]:<11} "
        f"{age(r['age']):>4}  {why(r)}"
        for r in rows
    ]


def note(message: asyncpg.Record) -> str:
    if message["state"] == "failed":
        return scrub(message["error"] or "")[:ERROR_SHOWN]
    if message["settle_at"] is None:
        return "cannot be checked automatically: check SendGrid's activity, then resend"
    if message["settle_due"]:
        return "being settled"
    return f"settled at {message['settle_at']:%Y-%m-%d %H:%M:%S %Z} (looked up at SendGrid, sent if not there)"


def age(delta: timedelta) -> str:
    seconds = max(int(delta.total_seconds()), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


async def resend(client: Client, db: Database, key: str, *, task_queue: str = TASK_QUEUE) -> MessageOutcome:
    """Send a failed or in-doubt message once more; its outcome. Run twice,
    it sends once: a second run while the first is on attaches to it, and
    one after it finds the message sent."""
    row = await db.fetchrow(MESSAGE, key)
    refusal = why_not_resent(key, row)
    if refusal:
        raise UsageError(refusal)
    request = MessageRequest(
        key=key, kind=row["kind"], channel=row["channel"], customer_id=row["customer_id"], order_id=row["order_id"],
        mode=SendMode.RESEND,
    )
    handle = await client.start_workflow(
        RESEND_WORKFLOW_TYPE,
        request,
        id=resend_workflow_id(key),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        # A resend that failed again (a bounce) may be run again later.
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        result_type=MessageOutcome,
    )
    try:
        return await handle.result()
    except WorkflowFailureError as err:
        raise UsageError(f"the resend of {key} failed: {err.cause or err}") from None


def why_not_resent(key: str, row: Any) -> str | None:
    if row is None:
        return f"no message with ledger key {key!r}"
    state = row["state"]
    if state == "sent":
        sent_as = f" as {row['provider_message_id']}" if row["provider_message_id"] else ""
        return f"{key} was already sent{sent_as}: not sent again"
    if state not in ("failed", "in_doubt"):
        return f"{key} is {state}: only a failed or in-doubt message is resent"
    if row["settling_later"]:
        return (
            f"{key} is in doubt and is settled at {row['settle_at']:%Y-%m-%d %H:%M:%S %Z}: looked up at SendGrid, and sent "
            "if it is not there; resend it only if it is still in doubt after that"
        )
    if row["blanked_at"] is not None:
        return (
            f"{key} cannot be resent: retention removed its rendering and recipient on {row['blanked_at']:%Y-%m-%d} "
            "(RETENTION_LEDGER_RENDERINGS), and a message rendered anew would not be the one that failed"
        )
    if not row["rendered"] or row["customer_id"] is None:
        return f"{key} was recorded before messages were kept as rendered: it cannot be resent as it was"
    return None


def describe(outcome: MessageOutcome) -> str:
    said = f"{outcome.key}: {outcome.state.value}"
    if outcome.provider_message_id:
        said += f" ({outcome.provider_message_id})"
    return said + (f": {outcome.error}" if outcome.error else "")
