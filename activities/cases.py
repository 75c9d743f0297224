"""A case's side effects (workflows/case_handling.py): opening it from an
order's trigger, its owner from configuration, its row in `cases`, and mail
to its owner (activities/staff_mail.py). What it tells the customer goes
through the customer send path (activities/messaging.py)."""

from __future__ import annotations

import asyncpg
from temporalio import activity
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError

from activities.staff_mail import StaffMailer
from messages.templates import render
from providers import RenderedMessage
from store import cases as case_store
from workflows.models import CASE_WORKFLOW_TYPE, CUSTOMER_ERASED, CaseOpening, CaseRecord, CaseRouting, CaseTrigger, OrderInput, StaffNotice


# The case's order, and whether its customer was erased (store/erasure.py).
ORDER_OF_CASE = """
SELECT o.document, c.erased_at IS NOT NULL AS erased
FROM orders o LEFT JOIN customers c USING (customer_id) WHERE o.order_id = $1
"""


async def start_case(client: Client, opening: CaseOpening, task_queue: str) -> None:
    """The case's workflow, started once: a second start finds it (running,
    or over: the case is not opened again)."""
    try:
        await client.start_workflow(
            CASE_WORKFLOW_TYPE,
            opening,
            id=opening.case_id,
            task_queue=task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            static_summary=f"Case {opening.n} of order {opening.order_id} ({opening.trigger})",
        )
    except WorkflowAlreadyStartedError:
        pass  # over already: it ran


class CaseActivities:
    def __init__(self, pool: asyncpg.Pool, client: Client, routing: CaseRouting, mailer: StaffMailer) -> None:
        self._pool = pool
        self._client = client
        self._routing = routing
        self._mailer = mailer

    @activity.defn
    async def open_case(self, trigger: CaseTrigger) -> CaseOpening:
        """The case the trigger opens, started; a retry finds the same one."""
        async with self._pool.acquire() as conn:
            try:
                opening = await case_store.open_case(
                    conn, order_id=trigger.order_id, trigger=trigger.trigger, trigger_key=trigger.trigger_key, text=trigger.text
                )
            except case_store.OrderNotRecorded as err:
                raise ApplicationError(str(err), type="OrderNotRecorded", non_retryable=True) from None
        await start_case(self._client, opening, activity.info().task_queue)
        return opening

    @activity.defn
    async def route_case(self, opening: CaseOpening) -> CaseRouting:
        """The routing as configured now, kept by the case for its life."""
        return self._routing

    @activity.defn
    async def record_case(self, record: CaseRecord) -> bool:
        """Whether the case's customer was erased: the case closes."""
        return await case_store.record_case(self._pool, record)

    @activity.defn
    async def notify_staff(self, notice: StaffNotice) -> str:
        """The mail to the case's owner; refused once the customer was erased:
        the notice (scheduled before the case closed) quotes their words."""
        row = await self._pool.fetchrow(ORDER_OF_CASE, notice.opening.order_id)
        if row["erased"]:
            raise ApplicationError(f"{notice.key} not sent: {CUSTOMER_ERASED}", type="CustomerErased", non_retryable=True)
        order = OrderInput.model_validate_json(row["document"])
        details = {**notice.opening.model_dump(mode="json"), **notice.details}
        content, html = render(notice.kind, order, details)
        mail = RenderedMessage(notice.key, notice.to, content.subject, "\n\n".join(content.paragraphs), html)
        return await self._mailer.send(mail, order_id=notice.opening.order_id, kind=notice.kind)
