"""What the Temporal server keeps of an order holds no customer data in plain
text: a real journey on the dev server, its history then read raw, as anyone
with access to the server (or Temporal Cloud) would, by a client without the
codec."""

from __future__ import annotations

import uuid
from datetime import timedelta

from temporalio.api.history.v1 import History
from temporalio.client import Client

from starter.cli import place_order
from tests.conftest import new_order, payment_for
from workflows.models import TASK_QUEUE, JourneySettings, OrderStatusView, customer_workflow_id

SHORT_JOURNEY = JourneySettings(feedback_delay=timedelta(seconds=1), recommendations_delay=timedelta(seconds=2))


def failures_in(history: History) -> list:
    """Every failure the history records, causes included."""
    found = []
    for event in history.events:
        attributes = getattr(event, event.WhichOneof("attributes"))
        for name in ("failure", "last_failure"):
            if attributes.DESCRIPTOR.fields_by_name.get(name) and attributes.HasField(name):
                failure = getattr(attributes, name)
                while failure.ByteSize():
                    found.append(failure)
                    failure = failure.cause
    return found


async def test_raw_history_on_the_server_holds_no_customer_data(dev_env, make_harness, fakes):
    uid = uuid.uuid4().hex[:8]
    order = new_order()
    customer = order["customer"]
    customer["name"] = f"Ada Lovelace{uid}"
    order["delivery"]["address"] = {"line1": f"Privet Drive {uid}", "city": "Warsaw", "postal_code": f"{uid[:2]}-{uid[2:5]}", "country": "PL"}
    # One refused attempt, so the history holds a failure (the attempt's last_failure).
    fakes.fail_next(customer["email"], 503)
    async with make_harness(dev_env, journey=SHORT_JOURNEY, task_queue=TASK_QUEUE) as h:
        # As `orders place` starts it: search attributes, summary and details included.
        workflow_id = await place_order(h.client, order)
        handle = h.client.get_workflow_handle(workflow_id, result_type=OrderStatusView)
        h.started += [handle, h.client.get_workflow_handle(customer_workflow_id(customer["customer_id"]))]
        await h.wait_touchpoint(handle, "order_confirmation")
        await handle.signal("payment_received", payment_for(order))
        await handle.signal("order_dispatched", {"carrier": "DHL", "tracking_number": f"T{uid}", "expected_delivery": await h.tomorrow()})
        await h.wait_touchpoint(handle, "dispatch_notice", "sms")
        await handle.signal("order_delivered", {"delivered_at": await h.now_iso()})
        await h.wait_touchpoint(handle, "feedback_request")
        await handle.signal("feedback_submitted", {"item_rating": 5, "seller_rating": 5, "comment": f"thanks, {customer['name']}"})
        result = await h.result(handle)
        assert result.status == "completed"

        raw = await Client.connect(dev_env.client.service_client.config.target_host, namespace=dev_env.client.namespace)
        kept = {}
        for wid in (workflow_id, customer_workflow_id(customer["customer_id"])):
            history = History(events=(await raw.get_workflow_handle(wid).fetch_history()).events)
            description = (await raw.get_workflow_handle(wid).describe()).raw_description
            kept[wid] = (history, history.SerializeToString() + description.SerializeToString())

    customer_data = [
        customer["email"], customer["phone"], customer["phone"].lstrip("+"), customer["name"], "Lovelace",
        order["delivery"]["address"]["line1"], order["delivery"]["address"]["postal_code"],
    ]
    for wid, (history, raw_bytes) in kept.items():
        assert [s for s in customer_data if s.encode() in raw_bytes] == [], wid
    # The order's history did carry a failure, and its message and stack trace are encrypted too.
    order_failures = failures_in(kept[workflow_id][0])
    assert order_failures, "expected the refused attempt's failure in the history"
    assert all(f.message == "Encoded failure" and not f.stack_trace for f in order_failures)
