"""Service recovery: no complaint without an owner (workflows/case_handling.py).

A case opens from each trigger (a low rating and a complaint through the
order's workflow, a "not helpful" vote as the HTTP service's relay starts
it), escalates twice when nobody acknowledges it, is acknowledged and
resolved by update (a wrong one refused with the reason), and reopens once;
its messages go through the ledger once each."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import temporalio.worker._workflow
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from store import cases as case_store
from store.cases import OrderNotRecorded, open_case
from tests.conftest import Harness, new_order, payment_for, store
from tests.fake_providers import FakeProviders
from workflows.ledger_key import LedgerKey
from workflows.models import CASE_WORKFLOW_TYPE, CaseOpening, CaseRouting, CaseView, Touchpoint

OWNER, LEAD, HEAD = "keyboards-team@shop.example", "cs-lead@shop.example", "cs-head@shop.example"
ROUTING = CaseRouting(
    by_category={"keyboards": OWNER}, default_owner="cs@shop.example", escalation=[LEAD, HEAD], reopen_window=timedelta(days=2)
)


def noted(view: CaseView, what: str, times: int = 1) -> bool:
    return sum(what in line for line in view.timeline) >= times


async def recorded_after_open(pool: asyncpg.Pool, case_id: str) -> asyncpg.Record:
    """The case's row once a change after its opening is written: the
    workflow writes it in an activity of its own, which may end after the
    view already shows the change."""
    for _ in range(400):
        row = await pool.fetchrow("SELECT status, escalation_level, owner FROM cases WHERE case_id = $1", case_id)
        if row["status"] != "open":
            return row
        await asyncio.sleep(0.05)
    raise AssertionError(f"{case_id} is still recorded open")


async def case_opened(h: Harness, case_id: str) -> WorkflowHandle:
    """The case's handle once its workflow exists (tests may poll)."""
    handle = h.client.get_workflow_handle(case_id, result_type=CaseView)
    h.started.append(handle)
    for _ in range(400):
        try:
            await handle.describe()
            return handle
        except RPCError:
            await asyncio.sleep(0.05)
    raise AssertionError(f"{case_id} was not started")


async def start_as_the_relay_does(h: Harness, opening: CaseOpening) -> WorkflowHandle:
    handle = await h.client.start_workflow(
        CASE_WORKFLOW_TYPE,
        opening,
        id=opening.case_id,
        task_queue=h.task_queue,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        result_type=CaseView,
    )
    h.started.append(handle)
    return handle


async def ledger_keys(pool, case_id: str) -> dict[str, int]:
    rows = await pool.fetch(
        "SELECT key, attempts, state, order_id FROM message_ledger WHERE key LIKE $1 ORDER BY created_at", f"{case_id}:%"
    )
    return {r["key"]: (r["state"], r["order_id"]) for r in rows}


async def test_a_vote_case_escalates_twice_is_resolved_by_update_and_reopens_once(
    ts_env: WorkflowEnvironment, make_harness, fakes: FakeProviders, pool
):
    order = new_order()
    await store(pool, order)
    vote_key = f"order-{order['order_id']}:dispatch_notice:email"
    async with pool.acquire() as conn:
        opening = await open_case(conn, order_id=order["order_id"], trigger="not_helpful", trigger_key=vote_key, text="Which DHL?")
    assert opening.case_id == f"case-{order['order_id']}-1"
    assert (opening.customer_id, opening.seller_id, opening.category) == (order["customer"]["customer_id"], "S1", "keyboards")
    async with make_harness(ts_env, case_routing=ROUTING) as h:
        handle = await start_as_the_relay_does(h, opening)
        # The relay retried: the same case, not a second one.
        again = await start_as_the_relay_does(h, opening)
        assert again.result_run_id == handle.result_run_id
        wait = lambda p: h.wait_for(handle, p, view_type=CaseView)  # noqa: E731

        view = await wait(lambda v: noted(v, "case_assigned mailed") and noted(v, "case_acknowledgement to the customer: sent"))
        assert (view.status, view.owner, view.escalation_level) == ("open", OWNER, 0)
        assert "Which DHL?" in fakes.deliveries_to(OWNER)[0]

        await ts_env.sleep(timedelta(hours=4, minutes=1))
        view = await wait(lambda v: noted(v, f"case_escalated mailed to {LEAD}"))
        assert (view.status, view.owner, view.escalation_level, view.sla_breaches) == ("escalated", LEAD, 1, 1)
        await ts_env.sleep(timedelta(hours=4, minutes=1))
        view = await wait(lambda v: noted(v, f"case_escalated mailed to {HEAD}"))
        assert (view.status, view.owner, view.escalation_level, view.sla_breaches) == ("escalated", HEAD, 2, 2)
        assert len(fakes.deliveries_to(LEAD)) == 1 and len(fakes.deliveries_to(HEAD)) == 1

        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update("case_resolved", {"resolution": "", "by": "Eve"}, result_type=CaseView)
        assert "resolution" in str(refused.value.cause)
        view = await handle.execute_update("case_acknowledged", {"by": "Eve"}, result_type=CaseView)
        assert view.status == "acknowledged" and view.due_at is None
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update("case_acknowledged", {"by": "Eve"}, result_type=CaseView)
        assert "already acknowledged" in str(refused.value.cause)
        view = await handle.execute_update("case_resolved", {"resolution": "A refund is on its way.", "by": "Eve"}, result_type=CaseView)
        assert view.status == "resolved"
        await wait(lambda v: noted(v, "case_outcome to the customer: sent"))

        await handle.signal("case_reopen_requested", {"comment": "No refund yet"})
        view = await wait(lambda v: v.status == "open" and v.reopened)
        await handle.signal("case_reopen_requested", {"comment": "still nothing"})
        view = await wait(lambda v: noted(v, "not reopened a second time"))
        assert view.status == "open" and view.reopen_comment == "No refund yet"
        await handle.execute_update("case_resolved", {"resolution": "Refunded today.", "by": "Eve"}, result_type=CaseView)
        await wait(lambda v: noted(v, "case_outcome to the customer: sent", times=2))
        await handle.signal("case_reopen_requested", {"comment": "no"})
        result = await asyncio.wait_for(handle.result(), 60)
        await h.keep_history(handle, "case_escalated_resolved_reopened")

    assert result.status == "resolved" and result.resolution == "Refunded today." and result.reopened
    row = await pool.fetchrow("SELECT * FROM cases WHERE case_id = $1", opening.case_id)
    assert (row["status"], row["owner"], row["escalation_level"], row["sla_breaches"]) == ("resolved", HEAD, 2, 2), (dict(row), result)
    assert (row["resolution"], row["resolved_by"], row["reopen_comment"]) == ("Refunded today.", "Eve", "No refund yet")
    assert row["reopened_at"] and row["acknowledged_at"] and row["due_at"] is None
    keys = await ledger_keys(pool, opening.case_id)
    case = opening.case_id
    assert keys == {
        f"{case}:case_acknowledgement:email": ("sent", order["order_id"]),
        f"{case}:case_assigned:round-1:email": ("sent", order["order_id"]),
        f"{case}:case_escalated:escalation-1:email": ("sent", order["order_id"]),
        f"{case}:case_escalated:escalation-2:email": ("sent", order["order_id"]),
        f"{case}:case_outcome:round-1:email": ("sent", order["order_id"]),
        f"{case}:case_assigned:round-2:email": ("sent", order["order_id"]),
        f"{case}:case_outcome:round-2:email": ("sent", order["order_id"]),
    }
    for key in keys:
        parsed = LedgerKey.parse(key)
        assert parsed.workflow_id == case and parsed.kind in set(Touchpoint)
    customer_mails = fakes.deliveries_to(order["customer"]["email"])
    assert sum("A refund is on its way." in m for m in customer_mails) == 1
    assert sum("Refunded today." in m for m in customer_mails) == 1
    # Only this case's: the fakes are shared with tests that send twice on purpose.
    assert fakes.duplicates(key_prefix=f"{case}:") == {}


async def test_a_resolution_that_comes_while_the_acknowledgement_is_recorded_is_recorded_too(
    ts_env: WorkflowEnvironment, make_harness, fakes: FakeProviders, pool, monkeypatch
):
    """`orders case ack X` then at once `orders case resolve X`: the resolution
    lands while the acknowledgement's row is being written, and is written after it."""
    order = new_order()
    await store(pool, order)
    async with pool.acquire() as conn:
        opening = await open_case(conn, order_id=order["order_id"], trigger="complaint", trigger_key=uuid.uuid4().hex, text="late")
    writing, release = asyncio.Event(), asyncio.Event()
    record_case = case_store.record_case

    async def slow_acknowledged_record(conn, record):
        if record.status == "acknowledged":
            writing.set()
            await release.wait()
        await record_case(conn, record)

    monkeypatch.setattr(case_store, "record_case", slow_acknowledged_record)
    async with make_harness(ts_env, case_routing=ROUTING) as h:
        handle = await start_as_the_relay_does(h, opening)
        await h.wait_for(handle, lambda v: noted(v, "case_assigned mailed"), view_type=CaseView)
        await handle.execute_update("case_acknowledged", {"by": "Eve"}, result_type=CaseView)
        await asyncio.wait_for(writing.wait(), 20)
        await handle.execute_update("case_resolved", {"resolution": "Sent again today.", "by": "Eve"}, result_type=CaseView)
        release.set()
        result = await asyncio.wait_for(handle.result(), 60)

    assert (result.status, result.resolution) == ("resolved", "Sent again today.")
    row = await pool.fetchrow("SELECT status, resolution, resolved_by, resolved_at FROM cases WHERE case_id = $1", opening.case_id)
    assert (row["status"], row["resolution"], row["resolved_by"]) == ("resolved", "Sent again today.", "Eve"), dict(row)
    assert row["resolved_at"] is not None


def single_batch_flags() -> frozenset | None:
    """The SDK's opt-in for activations as one batch (private: the release
    that makes it the default may rename it); None when this SDK has none."""
    try:
        from temporalio.worker._workflow_instance import _WorkflowLogicFlag

        flags = frozenset({_WorkflowLogicFlag.PROCESS_WORKFLOW_ACTIVATION_JOBS_AS_SINGLE_BATCH})
    except (ImportError, AttributeError):
        return None
    return flags if hasattr(temporalio.worker._workflow, "_DEFAULT_ENABLED_WORKFLOW_LOGIC_FLAGS") else None


@pytest.mark.parametrize(
    "single_batch",
    [False, pytest.param(True, marks=pytest.mark.may_skip("needs the SDK's private opt-in to single-batch activations"))],
    ids=["jobs-in-sets", "jobs-in-one-batch"],
)
async def test_an_acknowledgement_that_comes_with_the_sla_timer_is_not_overwritten_by_an_escalation(
    dev_env, make_harness, pool, monkeypatch, single_batch: bool
):
    """On the dev server, the worker away while the SLA passes and the owner
    acknowledges: the timer and the update come in one workflow task, and the
    acknowledgement wins. Under both of the SDK's activation orders: today's
    (updates, then conditions, then timers) and the single batch a later
    release makes the default (timers can fire before conditions are checked)."""
    flags = single_batch_flags() if single_batch else None
    if single_batch and flags is None:
        pytest.skip("this SDK has no opt-in to single-batch activations")
    order = new_order()
    await store(pool, order)
    async with pool.acquire() as conn:
        opening = await open_case(conn, order_id=order["order_id"], trigger="complaint", trigger_key=uuid.uuid4().hex, text="late")
    queue, routing = f"tq-{uuid.uuid4().hex[:8]}", ROUTING.model_copy(update={"sla": timedelta(seconds=5)})
    async with make_harness(dev_env, case_routing=routing, task_queue=queue) as h:
        handle = await h.client.start_workflow(
            CASE_WORKFLOW_TYPE, opening, id=opening.case_id, task_queue=queue, result_type=CaseView
        )
        view = await h.wait_for(handle, lambda v: noted(v, "case_assigned mailed"), view_type=CaseView)
    assert view.status == "open"
    await asyncio.sleep((view.due_at - datetime.now(UTC)).total_seconds() + 1)  # the SLA timer fires, no worker sees it
    acknowledged = asyncio.create_task(handle.execute_update("case_acknowledged", {"by": "Eve"}, result_type=CaseView))
    await asyncio.sleep(1)  # the update waits on the server, with the timer
    if flags:
        monkeypatch.setattr(temporalio.worker._workflow, "_DEFAULT_ENABLED_WORKFLOW_LOGIC_FLAGS", flags)
    async with make_harness(dev_env, case_routing=routing, task_queue=queue) as h:
        h.started.append(handle)
        view = await asyncio.wait_for(acknowledged, 20)
        view = await h.wait_for(handle, lambda v: noted(v, "case_acknowledgement to the customer"), view_type=CaseView)
        row = await recorded_after_open(pool, opening.case_id)
        history = await handle.fetch_history()

    failed = [e for e in history.events if e.HasField("workflow_task_failed_event_attributes")]
    assert failed == [], [e.workflow_task_failed_event_attributes.failure.message for e in failed]
    assert (view.status, view.escalation_level, view.owner, view.sla_breaches) == ("acknowledged", 0, OWNER, 0), view.timeline
    assert not noted(view, "escalated")
    assert (row["status"], row["escalation_level"], row["owner"]) == ("acknowledged", 0, OWNER)


async def test_the_comment_after_not_resolved_is_kept_with_the_reopened_case(
    ts_env: WorkflowEnvironment, make_harness, fakes: FakeProviders, pool
):
    """As the HTTP service sends them: "no" to "Was this resolved?" (no comment),
    then the "what was wrong" form's comment. The comment belongs to the round
    just reopened; only a "no" after the next resolution is a second "no"."""
    order = new_order()
    await store(pool, order)
    async with pool.acquire() as conn:
        opening = await open_case(conn, order_id=order["order_id"], trigger="complaint", trigger_key=uuid.uuid4().hex, text="late")
    async with make_harness(ts_env, case_routing=ROUTING) as h:
        handle = await start_as_the_relay_does(h, opening)
        wait = lambda p: h.wait_for(handle, p, view_type=CaseView)  # noqa: E731
        await wait(lambda v: noted(v, "case_assigned mailed"))
        await handle.execute_update("case_resolved", {"resolution": "Sent again.", "by": "Eve"}, result_type=CaseView)
        await wait(lambda v: noted(v, "case_outcome to the customer: sent"))
        await handle.signal("case_reopen_requested", {"comment": None})
        await wait(lambda v: v.status == "open" and v.reopened)
        await handle.signal("case_reopen_requested", {"comment": "The parcel never came"})
        view = await wait(lambda v: v.reopen_comment is not None)
        for _ in range(100):
            stored = await pool.fetchval("SELECT reopen_comment FROM cases WHERE case_id = $1", opening.case_id)
            if stored:
                break
            await asyncio.sleep(0.05)
        await handle.execute_update("case_resolved", {"resolution": "Refunded.", "by": "Eve"}, result_type=CaseView)
        await wait(lambda v: noted(v, "case_outcome to the customer: sent", times=2))
        await handle.signal("case_reopen_requested", {"comment": "Still no refund"})
        result = await asyncio.wait_for(handle.result(), 60)

    assert view.reopen_comment == "The parcel never came" and view.status == "open" and not noted(view, "not reopened")
    assert stored == "The parcel never came"
    assert (result.status, result.reopened, result.reopen_comment) == ("resolved", True, "The parcel never came")
    assert noted(result, "not reopened a second time")
    row = await pool.fetchrow("SELECT status, resolution, reopen_comment FROM cases WHERE case_id = $1", opening.case_id)
    assert tuple(row) == ("resolved", "Refunded.", "The parcel never came")


async def test_a_low_rating_opens_a_case_through_the_order(ts_env: WorkflowEnvironment, make_harness, fakes: FakeProviders, pool):
    order = new_order()
    async with make_harness(ts_env, case_routing=ROUTING) as h:
        handle = await h.start(order)
        await h.wait_touchpoint(handle, "order_confirmation")
        await handle.signal("payment_received", payment_for(order))
        await h.wait_touchpoint(handle, "payment_confirmation")
        await handle.signal("order_delivered", {"delivered_at": await h.now_iso()})
        await h.wait_touchpoint(handle, "delivery_confirmation")
        await h.wait_queues_empty(handle)
        await handle.signal("feedback_submitted", {"item_rating": 4, "seller_rating": 2, "comment": "Rude courier"})
        case = await case_opened(h, f"case-{order['order_id']}-1")
        view = await h.wait_for(case, lambda v: noted(v, "case_assigned mailed"), view_type=CaseView)
        order_view = await h.wait_for(handle, lambda v: "low_rating" in v.attention_reasons)
        await ts_env.sleep(timedelta(days=30))  # the order's journey runs to its end
        await h.result(handle)
        await h.keep_history(handle, "low_rating_case")

    assert view.trigger == "low_rating" and view.owner == OWNER and view.status == "open"
    assert order_view.needs_attention
    row = await pool.fetchrow("SELECT trigger, trigger_key, text FROM cases WHERE order_id = $1", order["order_id"])
    assert dict(row) == {"trigger": "low_rating", "trigger_key": f"order-{order['order_id']}:low_rating", "text": "Rude courier"}


async def test_complaints_open_a_case_each_through_the_order_even_once_it_is_over(
    ts_env: WorkflowEnvironment, make_harness, fakes: FakeProviders, pool, database_url, monkeypatch
):
    """A complaint opens one case, whichever way it comes: a backend retrying
    it on the running order, or `orders event` once the order's workflow is over."""
    from starter.cli import complain_after_the_order

    order = new_order()
    async with make_harness(ts_env, case_routing=ROUTING) as h:
        handle = await h.start(order)
        await h.wait_touchpoint(handle, "order_confirmation")
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update("apply_event", {"event": "complaint_received", "payload": {"channel": "phone"}})
        assert "malformed complaint_received: text: Field required" in str(refused.value.cause)
        await handle.signal("complaint_received", {"channel": "phone", "text": "Charged twice"})
        first = await case_opened(h, f"case-{order['order_id']}-1")
        await h.wait_for(first, lambda v: noted(v, "case_assigned mailed"), view_type=CaseView)
        # The backend retried it: the same case (the order opens its cases in turn).
        await handle.signal("complaint_received", {"channel": "phone", "text": "Charged twice"})
        # Cancelled, the order stays open for late reports, and still hears complaints.
        await handle.signal("order_cancelled", {"reason": "changed my mind"})
        await h.wait_for(handle, lambda v: v.status == "cancelled")
        await handle.signal("complaint_received", {"channel": "chat", "text": "Where is my refund?"})
        second = await case_opened(h, f"case-{order['order_id']}-2")
        await h.wait_for(second, lambda v: noted(v, "case_acknowledgement to the customer: sent"), view_type=CaseView)
        # The path `orders event` takes when the order's workflow is over: the same case again.
        monkeypatch.setenv("DATABASE_URL", database_url)
        again = await complain_after_the_order(h.client, order["order_id"], {"channel": "chat", "text": "Where is my refund?"})

    assert again.case_id == second.id
    rows = await pool.fetch("SELECT n, trigger, trigger_key, text FROM cases WHERE order_id = $1 ORDER BY n", order["order_id"])
    assert [(r["n"], r["trigger"], r["text"]) for r in rows] == [
        (1, "complaint", "Charged twice"),
        (2, "complaint", "Where is my refund?"),
    ]
    assert all(r["trigger_key"].startswith(f"order-{order['order_id']}:complaint-") for r in rows)
    assert sum("We hear you" in m for m in fakes.deliveries_to(order["customer"]["email"])) == 2


async def test_a_retried_trigger_opens_one_case_and_two_at_once_get_their_own_numbers(pool):
    order = new_order()
    await store(pool, order)
    order_id = order["order_id"]

    async def opened(key: str) -> CaseOpening:
        async with pool.acquire() as conn:
            return await open_case(conn, order_id=order_id, trigger="complaint", trigger_key=key, text="x")

    a, b = await asyncio.gather(opened("k-a"), opened("k-b"))
    assert sorted([a.n, b.n]) == [1, 2]
    assert await opened("k-a") == a
    assert await pool.fetchval("SELECT count(*) FROM cases WHERE order_id = $1", order_id) == 2
    with pytest.raises(OrderNotRecorded, match="is not recorded"):
        async with pool.acquire() as conn:
            await open_case(conn, order_id=f"nope-{uuid.uuid4().hex}", trigger="complaint", trigger_key="k-c", text=None)


async def test_operators_find_cases_by_status_and_owner_and_answer_them_with_the_cli(dev_env, make_harness, pool):
    """On the dev server: CaseStatus and CaseOwner are searchable, one upsert
    per transition, and `orders case ack|resolve|show` print the answer or
    the validator's rejection."""
    import argparse

    from starter.cli import UsageError, case_command

    order = new_order()
    await store(pool, order)
    async with pool.acquire() as conn:
        opening = await open_case(conn, order_id=order["order_id"], trigger="complaint", trigger_key=uuid.uuid4().hex, text="late")
    owner = f"team-{uuid.uuid4().hex[:6]}@shop.example"
    async with make_harness(dev_env, case_routing=ROUTING.model_copy(update={"default_owner": owner, "by_category": {}})) as h:
        handle = await start_as_the_relay_does(h, opening)
        await h.wait_for(handle, lambda v: noted(v, "case_assigned mailed"), view_type=CaseView)

        async def listed(query: str) -> list[str]:
            for _ in range(200):
                found = [w.id async for w in h.client.list_workflows(query)]
                if found:
                    return found
                await asyncio.sleep(0.1)
            return []

        assert await listed(f'CaseStatus="open" AND CaseOwner="{owner}"') == [opening.case_id]
        case = lambda command, **kw: case_command(h.client, argparse.Namespace(case_command=command, case_id=opening.case_id, **kw))  # noqa: E731
        with pytest.raises(UsageError, match="rejected: resolution: String should have at least 1 character"):
            await case("resolve", resolution="", by="Eve")
        assert (await case("ack", by="Eve")).status == "acknowledged"
        assert await listed(f'CaseStatus="acknowledged" AND CaseOwner="{owner}"') == [opening.case_id]
        view = await case("show")
        assert noted(view, "acknowledged by Eve")
        await handle.terminate("the test is over")
    upserts = [e for e in (await handle.fetch_history()).events if e.HasField("upsert_workflow_search_attributes_event_attributes")]
    assert len(upserts) == 2  # opened (status and owner together), acknowledged


def test_case_routing_comes_from_the_environment_and_a_bad_entry_says_what_is_wrong():
    from activities.config import case_routing_from_env

    routing = case_routing_from_env({
        "CASE_OWNERS_BY_SELLER": "S1=gadgets@shop.example", "CASE_OWNERS_BY_CATEGORY": "keyboards=kb@shop.example",
        "CASE_DEFAULT_OWNER": "cs@shop.example", "CASE_ESCALATION": "lead@shop.example, head@shop.example", "CASE_SLA": "2h",
    })
    assert routing.escalation == ["lead@shop.example", "head@shop.example"] and routing.sla == timedelta(hours=2)
    opening = lambda seller, category: CaseOpening(  # noqa: E731
        case_id="case-A-1", order_id="A", n=1, trigger="complaint", customer_id="C", seller_id=seller, category=category,
        opened_at="2026-01-01T00:00:00Z",
    )
    assert routing.owner_for(opening("S1", "keyboards")) == "gadgets@shop.example"
    assert routing.owner_for(opening("S2", "keyboards")) == "kb@shop.example"
    assert routing.owner_for(opening("S2", "mice")) == "cs@shop.example"
    with pytest.raises(ValueError, match="CASE_OWNERS_BY_SELLER: 'S1' is not KEY=OWNER"):
        case_routing_from_env({"CASE_OWNERS_BY_SELLER": "S1"})
