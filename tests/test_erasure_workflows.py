"""An erased customer's open order sends nothing more and ends, their
customer workflow ends, and their cases close (time-skipping), told by
`customer_erased`."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from temporalio.client import WorkflowExecutionStatus, WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from store import cases as case_store
from store import erasure
from store.cases import open_case
from tests.conftest import new_order, store
from tests.fake_providers import FakeProviders
from tests.test_cases import HEAD, LEAD, ROUTING, noted, start_as_the_relay_does
from tests.test_exactly_once import requests_to
from workflows.models import CaseView

# The erasure owes the workflows signals that the test delivers itself.
pytestmark = pytest.mark.usefixtures("no_owed_signals_left")

# These cases' own owner: tests/test_cases.py counts the mail its owner gets.
OWNER = "erased-customers-cases@shop.example"
CASE_ROUTING = ROUTING.model_copy(update={"by_category": {"keyboards": OWNER}})


async def test_an_erased_customer_s_open_order_sends_nothing_more_and_ends_and_so_does_their_journey(
    ts_env: WorkflowEnvironment, make_harness, fakes: FakeProviders, pool
):
    order = new_order()
    email = order["customer"]["email"]
    async with make_harness(ts_env) as h:
        handle = await h.start(order)
        await h.wait_touchpoint(handle, "order_confirmation")
        await h.wait_queues_empty(handle)
        sent_before = len(requests_to(fakes, email))
        async with pool.acquire() as conn:
            forgotten = await erasure.forget(conn, order["customer"]["customer_id"], "test")
        for workflow_id in (f"order-{order['order_id']}", f"customer-{order['customer']['customer_id']}"):
            await h.client.get_workflow_handle(workflow_id).signal(erasure.ERASED_SIGNAL, {})
        assert forgotten.new
        result = await h.result(handle)
        customer = h.client.get_workflow_handle(f"customer-{order['customer']['customer_id']}")
        await asyncio.wait_for(customer.result(), 30)
        assert (await customer.describe()).status is WorkflowExecutionStatus.COMPLETED
        # Days later: no payment reminder, no cancellation went out.
        await ts_env.sleep(timedelta(days=4))
    assert result.status == "awaiting_payment"
    assert len(requests_to(fakes, email)) == sent_before
    assert [t.kind for t in result.touchpoints] == ["order_confirmation"]


async def test_an_erased_customer_s_cases_send_nothing_more_refuse_answers_forget_their_words_and_end_closed(
    ts_env: WorkflowEnvironment, make_harness, fakes: FakeProviders, pool, monkeypatch
):
    """One case reopened and waiting for its owner, one resolved and waiting
    out its reopen window: both told `customer_erased` by the erasure, both
    end at once, closed, without the customer's words; an answer that comes
    while one is closing is refused with the reason."""
    order = new_order()
    await store(pool, order)
    oid, cid, name = order["order_id"], order["customer"]["customer_id"], order["customer"]["name"]
    openings = []
    for n in (1, 2):
        async with pool.acquire() as conn:
            openings.append(
                await open_case(conn, order_id=oid, trigger="complaint", trigger_key=uuid.uuid4().hex, text=f"{name}: parcel {n} is broken")
            )
    reopened, resolved = openings
    closing, release = asyncio.Event(), asyncio.Event()
    record_case = case_store.record_case

    async def slow_closing_record(conn, record):
        if record.case_id == reopened.case_id and record.status == "closed":
            closing.set()
            await release.wait()
        await record_case(conn, record)

    monkeypatch.setattr(case_store, "record_case", slow_closing_record)
    async with make_harness(ts_env, case_routing=CASE_ROUTING) as h:
        handles = [await start_as_the_relay_does(h, opening) for opening in openings]
        for handle in handles:
            await h.wait_for(handle, lambda v: noted(v, "case_acknowledgement to the customer: sent") and noted(v, "case_assigned mailed"), view_type=CaseView)
            await handle.execute_update("case_resolved", {"resolution": f"Refunded, dear {name}", "by": "Eve"}, result_type=CaseView)
            await h.wait_for(handle, lambda v: noted(v, "case_outcome to the customer: sent"), view_type=CaseView)
        await handles[0].signal("case_reopen_requested", {"comment": f"No refund yet, {name} here"})
        await h.wait_for(handles[0], lambda v: v.reopened and noted(v, "case_assigned mailed", times=2), view_type=CaseView)
        staff_mails = {to: len(fakes.deliveries_to(to)) for to in (OWNER, LEAD, HEAD)}
        customer_mails = len(fakes.deliveries_to(order["customer"]["email"]))

        async with pool.acquire() as conn:
            forgotten = await erasure.forget(conn, cid, "test")
        told = await pool.fetch("SELECT workflow_id FROM provider_events WHERE event_id = ANY($1::text[])", forgotten.owed_event_ids)
        assert {r["workflow_id"] for r in told} >= {reopened.case_id, resolved.case_id}
        for handle in handles:
            await handle.signal(erasure.ERASED_SIGNAL, {})
        await asyncio.wait_for(closing.wait(), 20)
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handles[0].execute_update("case_acknowledged", {"by": "Eve"}, result_type=CaseView)
        release.set()
        results = [await asyncio.wait_for(handle.result(), 30) for handle in handles]
        await h.keep_history(handles[0], "case_closed_customer_erased")

    assert "customer erased" in str(refused.value.cause)
    for result, opening in zip(results, openings):
        assert (result.status, result.closed_reason) == ("closed", "customer erased"), result.timeline
        assert (result.resolution, result.reopen_comment, result.due_at) == (None, None, None)
        assert noted(result, "closed: customer erased")
        assert name not in str(result.model_dump())
        row = await pool.fetchrow("SELECT status, closed_reason, text, resolution, reopen_comment FROM cases WHERE case_id = $1", opening.case_id)
        assert dict(row) == {"status": "closed", "closed_reason": "customer erased", "text": None, "resolution": None, "reopen_comment": None}
    # No escalation, reminder, outcome or acknowledgement after the erasure.
    assert {to: len(fakes.deliveries_to(to)) for to in (OWNER, LEAD, HEAD)} == staff_mails
    assert len(fakes.deliveries_to(order["customer"]["email"])) == customer_mails


async def test_a_staff_mail_about_an_erased_customer_s_case_is_not_sent(pool):
    """An escalation already scheduled when the erasure came (or its retry)
    carries the complaint in its input: it is refused, not rendered."""
    from temporalio.exceptions import ApplicationError
    from temporalio.testing import ActivityEnvironment

    from activities.cases import CaseActivities
    from activities.staff_mail import StaffMailer
    from workflows.models import StaffNotice, Touchpoint

    order = new_order()
    await store(pool, order)
    async with pool.acquire() as conn:
        opening = await open_case(conn, order_id=order["order_id"], trigger="complaint", trigger_key=uuid.uuid4().hex, text="Zbigniew took it")
        await erasure.forget(conn, order["customer"]["customer_id"], "test")
    activities = CaseActivities(pool, None, CASE_ROUTING, StaffMailer(pool, None))
    key = f"{opening.case_id}:case_escalated:escalation-1:email"
    notice = StaffNotice(key=key, kind=Touchpoint.CASE_ESCALATED, to=LEAD, opening=opening, details={"level": 1})
    with pytest.raises(ApplicationError, match="customer erased") as refused:
        await ActivityEnvironment().run(activities.notify_staff, notice)
    assert refused.value.non_retryable
    assert await pool.fetchval("SELECT count(*) FROM message_ledger WHERE key = $1", key) == 0
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE ledger_key = $1", key) == 0


async def test_a_case_that_starts_after_its_customer_was_erased_closes_at_once(
    ts_env: WorkflowEnvironment, make_harness, fakes: FakeProviders, pool
):
    """A "not helpful" vote's case the relay starts late, after the erasure
    (whose `customer_erased` found no workflow to tell): its first record
    finds the customer erased, and it ends closed without a mail."""
    order = new_order()
    await store(pool, order)
    async with pool.acquire() as conn:
        opening = await open_case(conn, order_id=order["order_id"], trigger="not_helpful", trigger_key=uuid.uuid4().hex, text="Which DHL?")
        await erasure.forget(conn, order["customer"]["customer_id"], "test")
    async with make_harness(ts_env, case_routing=CASE_ROUTING) as h:
        handle = await start_as_the_relay_does(h, opening.model_copy(update={"text": None}))
        result = await asyncio.wait_for(handle.result(), 30)

    assert (result.status, result.closed_reason) == ("closed", "customer erased"), result.timeline
    assert not noted(result, "mailed") and not noted(result, "to the customer")
    assert [m for m in fakes.deliveries_to(OWNER) if opening.case_id in m] == []
    assert fakes.deliveries_to(order["customer"]["email"]) == []
    row = await pool.fetchrow("SELECT status, closed_reason FROM cases WHERE case_id = $1", opening.case_id)
    assert tuple(row) == ("closed", "customer erased")
