"""Generated bad input: invalid orders and streams of malformed, out-of-order
and duplicate events never fail a workflow task, and every rejection says what
was wrong."""

from __future__ import annotations

import asyncio
import copy
import uuid
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from temporalio.api.enums.v1 import EventType
from temporalio.service import RPCError, RPCStatusCode

from tests.conftest import new_order, payment_for
from workflows.event_rules import format_validation_error
from workflows.models import EVENT_MODELS, OrderInput, OrderStatusView

FUZZ = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,  # the same examples on every CI run; raise max_examples locally to explore
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    st.sampled_from(["-1", "0", "1e9", "", "9" * 40, "2026-13-45", "+1", "DHL"]),
    st.just("x" * 300_000),  # huge string
)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in a JSON document a value can be replaced or removed."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            found += paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += paths(v, prefix + (i,))
    return found


@st.composite
def broken_orders(draw) -> dict[str, Any]:
    order = new_order()
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        where = draw(st.sampled_from(paths(order)))
        parent = order
        for step in where[:-1]:
            parent = parent[step]
        if isinstance(parent, dict) and draw(st.booleans()):
            parent.pop(where[-1], None)
        else:
            parent[where[-1]] = draw(json_values)
    return order


def task_failures(history) -> list[str]:
    return [
        e.workflow_task_failed_event_attributes.failure.message
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
    ]


@FUZZ
@given(order=broken_orders())
async def test_generated_invalid_orders_are_rejected_with_the_reason(dev_env, make_harness, order):
    try:
        OrderInput.model_validate(order)
    except ValidationError as err:
        expected = format_validation_error(err)
    else:
        assume(False)  # the mutation happened to leave a valid order
    if isinstance(order.get("order_id"), str):  # unique per example; a missing id stays missing
        order["order_id"] = f"fz-{uuid.uuid4().hex[:10]}"
    async with make_harness(dev_env) as h:
        handle = await h.client.start_workflow(
            "OrderLifecycle", order, id=f"fuzz-order-{uuid.uuid4().hex}", task_queue=h.task_queue, result_type=OrderStatusView
        )
        result = await h.result(handle, timeout=30)
        history = await handle.fetch_history()
    assert result.status == "rejected"
    assert result.rejection_reason == expected
    assert task_failures(history) == []


def valid_events(order: dict[str, Any], today: str) -> dict[str, dict[str, Any]]:
    return {
        "payment_received": payment_for(order),
        "order_dispatched": {"carrier": "DHL", "tracking_number": "FZ1", "expected_delivery": today},
        "out_for_delivery": {"date": today},
        "order_delivered": {"delivered_at": f"{today}T12:00:00+00:00"},
        "parcel_collected": {},
        "order_cancelled": {"reason": "fuzz"},
        "feedback_submitted": {"item_rating": 4, "seller_rating": 2},
        "complaint_received": {"channel": "phone", "text": "fuzz"},
    }


events = st.lists(
    st.tuples(
        st.sampled_from(sorted(EVENT_MODELS)),
        st.one_of(st.just("valid"), json_values, st.dictionaries(st.sampled_from(["amount", "currency", "date", "item_rating", "carrier"]), json_scalars, max_size=3)),
    ),
    min_size=1,
    max_size=8,
)


def malformed(name: str, payload: Any) -> bool:
    try:
        EVENT_MODELS[name].model_validate(payload)
    except ValidationError:
        return True
    return False


async def settled_history(handle, signals: int):
    """The history once a workflow task has completed after the last signal."""
    for _ in range(200):
        history = await handle.fetch_history()
        types = [e.event_type for e in history.events]
        signalled = [i for i, t in enumerate(types) if t == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED]
        completed = [i for i, t in enumerate(types) if t == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED]
        if len(signalled) == signals and completed and completed[-1] > signalled[-1]:
            return history
        await asyncio.sleep(0.05)
    raise AssertionError("the signals were not all handled")


@FUZZ
@given(stream=events)
async def test_generated_event_streams_never_fail_a_workflow_task(dev_env, make_harness, stream):
    order = new_order()
    async with make_harness(dev_env) as h:
        handle = await h.start(order)
        today = (await h.now()).date().isoformat()
        good = valid_events(order, today)
        sent = []
        for name, payload in stream:
            payload = copy.deepcopy(good[name]) if payload == "valid" else payload
            try:
                await handle.signal(name, payload)
            except RPCError as err:
                # A valid cancellation ends the order; the server refuses what follows.
                assert err.status == RPCStatusCode.NOT_FOUND and "completed" in err.message, err
                break
            sent.append((name, payload))
        history = await settled_history(handle, len(sent))
        view = await handle.query("status", result_type=OrderStatusView)
        if view.status != "cancelled":
            await handle.terminate("fuzz done")
    assert task_failures(history) == []
    expected_malformed = sorted(name for name, payload in sent if malformed(name, payload))
    reported_malformed = sorted(r.event for r in view.rejected_events if r.reason.startswith(f"malformed {r.event}: "))
    assert reported_malformed == expected_malformed
    for rejected in view.rejected_events:
        assert len(rejected.reason) > 10, rejected
