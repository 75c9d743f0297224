"""Provider failures, channel fallback, the outbox and the exactly-once ledger."""

from __future__ import annotations

import dataclasses
import uuid

from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import ResetWorkflowExecutionRequest
from temporalio.client import WorkflowHandle

from activities.config import ProviderConfig
from providers.sendgrid import SendGridEmail
from providers.twilio import TwilioSms
from tests.conftest import Harness, new_order, payment_for
from tests.fake_providers import BOUNCING_EMAIL_DOMAIN, FakeProviders
from tests.test_journey import kinds
from workflows.ledger_key import LedgerKey
from workflows.models import Channel, OrderStatusView


async def test_transient_errors_are_retried_and_sent_once(ts_env, make_harness, fakes: FakeProviders, pool):
    order = new_order()
    email = order["customer"]["email"]
    fakes.fail_next(email, 503, 429)
    async with make_harness(ts_env) as h:
        handle = await h.start(order)
        view = await h.wait_touchpoint(handle, "order_confirmation")
        await handle.terminate("test done")
    assert kinds(view) == [("order_confirmation", "email", "sent")]
    assert len(fakes.deliveries_to(email)) == 1
    row = await pool.fetchrow("SELECT state, attempts FROM message_ledger WHERE key = $1", str(LedgerKey.of_order(order["order_id"], "order_confirmation", "email")))
    assert tuple(row) == ("sent", 3)


async def test_refused_email_goes_by_sms_and_is_flagged(ts_env, make_harness, fakes: FakeProviders, pool):
    order = new_order()
    order["customer"]["email"] = f"{order['order_id']}@{BOUNCING_EMAIL_DOMAIN}"
    async with make_harness(ts_env) as h:
        handle = await h.start(order)
        view = await h.wait_touchpoint(handle, "order_confirmation", "sms")
        await handle.terminate("test done")
        await h.keep_history(handle, "failed_message")
    assert kinds(view) == [("order_confirmation", "email", "failed"), ("order_confirmation", "sms", "sent")]
    assert "Does not contain a valid address" in view.touchpoints[0].error
    assert view.attention_reasons == ["message_failed:order_confirmation:email"]
    assert fakes.deliveries_to(order["customer"]["phone"])[0].startswith(f"Order {order['order_id']} confirmed")
    state = await pool.fetchval("SELECT state FROM message_ledger WHERE key = $1", str(LedgerKey.of_order(order["order_id"], "order_confirmation", "email")))
    assert state == "failed"


async def test_unsubscribed_number_falls_back_to_email(ts_env, make_harness, fakes: FakeProviders):
    """Twilio's 21610 (the number replied STOP): the number is suppressed and
    the message not permitted; the next SMS makes no request at all."""
    order = new_order()
    phone = order["customer"]["phone"]
    fakes.opt_out(phone)
    async with make_harness(ts_env) as h:
        handle = await h.start(order)
        await handle.signal("payment_received", payment_for(order))
        await h.wait_touchpoint(handle, "payment_confirmation")
        await handle.signal("order_dispatched", {"carrier": "DHL", "tracking_number": "T9", "expected_delivery": await h.tomorrow()})
        await handle.signal("out_for_delivery", {"date": await h.tomorrow()})
        view = await h.wait_touchpoint(handle, "delivery_day", "email")
        await handle.terminate("test done")
    assert ("delivery_day", "sms", "not_permitted") in kinds(view)
    errors = {t.kind: t.error for t in view.touchpoints if t.state == "not_permitted"}
    assert "21610" in errors["dispatch_notice"] and phone not in errors["dispatch_notice"]
    assert errors["delivery_day"] == "sms recipient suppressed: twilio 21610"
    sms_requests = [r for r in fakes.requests if r.method == "POST" and r.path.endswith("/Messages.json")]
    assert len([r for r in sms_requests if r.form["To"] == phone]) == 1  # the dispatch notice's; none after
    # The dispatch notice already went by email, so its refused SMS is not re-sent there.
    # (Each channel sends on its own, so either may be recorded first.)
    assert sorted(k for k in kinds(view) if k[0] == "dispatch_notice") == [
        ("dispatch_notice", "email", "sent"),
        ("dispatch_notice", "sms", "not_permitted"),
    ]


class WorkerDied(Exception):
    """Stands for a worker dying inside a provider call. Whatever a call
    raises, the request may have left: the row stays 'sending', its lease
    ended, as when a dead worker's attempt has timed out."""


async def test_retried_activity_after_completion_returns_the_recorded_send(
    dev_env, make_harness, fakes: FakeProviders, pool
):
    """An operator resets the order to its start (the dev server: the
    time-skipping one has no reset): the new run, the same order's, records
    it again and asks for its confirmation again; the ledger returns the
    recorded send. One confirmation."""
    order = new_order()
    async with make_harness(dev_env) as h:
        first = await h.start(order)
        await h.wait_touchpoint(first, "order_confirmation")
        reset_run = await reset_to_start(h, first)
        again = h.client.get_workflow_handle(first.id, run_id=reset_run, result_type=OrderStatusView)
        view = await h.wait_touchpoint(again, "order_confirmation")
        history = await again.fetch_history()
        await again.terminate("test done")
    assert view.status == "awaiting_payment"
    assert len(fakes.deliveries_to(order["customer"]["email"])) == 1
    assert kinds(view) == [("order_confirmation", "email", "sent")]
    sends = [e for e in history.events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED]
    assert [e.activity_task_scheduled_event_attributes.activity_type.name for e in sends] == ["record_order", "send_message"]


async def reset_to_start(h: Harness, handle: WorkflowHandle) -> str:
    """`temporal workflow reset --type FirstWorkflowTask`: the new run's id."""
    history = await handle.fetch_history()
    first_task = next(e.event_id for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED)
    reset = await h.client.workflow_service.reset_workflow_execution(
        ResetWorkflowExecutionRequest(
            namespace=h.client.namespace,
            workflow_execution=WorkflowExecution(workflow_id=handle.id, run_id=handle.first_execution_run_id),
            reason="an operator's reset",
            workflow_task_finish_event_id=first_task,
            request_id=str(uuid.uuid4()),
        )
    )
    return reset.run_id


async def test_without_credentials_messages_go_to_the_outbox(ts_env, make_harness, fakes: FakeProviders, pool):
    order = new_order()
    async with make_harness(ts_env, config=ProviderConfig()) as h:
        handle = await h.start(order)
        await handle.signal("payment_received", payment_for(order))
        await h.wait_touchpoint(handle, "payment_confirmation")
        await handle.signal("order_dispatched", {"carrier": "DHL", "tracking_number": "OUT1", "expected_delivery": await h.tomorrow()})
        view = await h.wait_for(handle, lambda v: sum(t.kind == "dispatch_notice" for t in v.touchpoints) == 2)
        await handle.terminate("test done")
    assert all(t.provider_message_id.startswith("outbox-") for t in view.touchpoints)
    rows = {
        (r["channel"], r["subject"]): r
        for r in await pool.fetch(
            "SELECT channel, recipient, subject, body FROM outbox WHERE starts_with(ledger_key, $1)",
            LedgerKey.order_prefix(order["order_id"]),
        )
    }
    assert len(rows) == 4
    mail = rows["email", f"Order {order['order_id']} is on its way"]
    sms = rows["sms", None]
    assert "OUT1" in mail["body"]
    assert sms["recipient"] == order["customer"]["phone"] and "OUT1" in sms["body"]
    assert fakes.deliveries_to(order["customer"]["email"]) == []


async def dispatch_notice_by_sms(h, order: dict, tracking: str):
    """Pay and dispatch an order; its status once the SMS dispatch notice has its outcome."""
    handle = await h.start(order)
    await handle.signal("payment_received", payment_for(order))
    # The dispatch must not overtake the payment confirmation's send (see Harness.wait_queues_empty).
    await h.wait_touchpoint(handle, "payment_confirmation")
    await handle.signal("order_dispatched", {"carrier": "DHL", "tracking_number": tracking, "expected_delivery": await h.tomorrow()})
    view = await h.wait_touchpoint(handle, "dispatch_notice", "sms")
    await handle.terminate("test done")
    return view


async def test_unanswered_sms_is_looked_up_at_twilio_not_sent_again(
    ts_env, make_harness, fakes: FakeProviders, provider_config: ProviderConfig, pool
):
    """Twilio accepts the SMS but answers after the client's timeout: the retry
    finds it in Twilio's Message list and records it as sent."""
    order = new_order()
    phone = order["customer"]["phone"]
    fakes.hang_next(phone, 2.0)
    config = dataclasses.replace(provider_config, request_timeout=0.5)
    async with make_harness(ts_env, config=config) as h:
        view = await dispatch_notice_by_sms(h, order, "HANG1")
    assert ("dispatch_notice", "sms", "sent") in kinds(view)
    assert not view.needs_attention
    assert len(fakes.deliveries_to(phone)) == 1
    row = await pool.fetchrow(
        "SELECT state, attempts, provider_message_id FROM message_ledger WHERE key = $1",
        str(LedgerKey.of_order(order["order_id"], "dispatch_notice", "sms")),
    )
    assert (row["state"], row["attempts"]) == ("sent", 1)  # one request made; the retry only looked
    assert row["provider_message_id"] == next(t.provider_message_id for t in view.touchpoints if t.channel == "sms")
    assert any(r.method == "GET" and r.params.get("To") == phone for r in fakes.requests)


class SmsLostBeforeRequest(TwilioSms):
    """The worker dies after claiming the row but before the request leaves."""

    died = False

    async def send(self, message):
        if not self.died:
            self.died = True
            raise WorkerDied("worker killed before the provider call")
        return await super().send(message)


async def test_sms_claimed_but_never_sent_is_sent_after_lookup(ts_env, make_harness, fakes: FakeProviders, provider_config: ProviderConfig):
    order = new_order()
    phone = order["customer"]["phone"]
    lost = SmsLostBeforeRequest(provider_config)
    providers = {Channel.EMAIL: SendGridEmail(provider_config), Channel.SMS: lost}
    async with make_harness(ts_env, providers=providers) as h:
        view = await dispatch_notice_by_sms(h, order, "LOST1")
    assert lost.died
    assert ("dispatch_notice", "sms", "sent") in kinds(view)
    assert len(fakes.deliveries_to(phone)) == 1


async def test_unanswered_email_is_settled_from_email_activity_and_never_sent_twice(
    ts_env, make_harness, fakes: FakeProviders, provider_config: ProviderConfig
):
    """SendGrid took the mail but answered after the client's timeout: in
    doubt, until its Email Activity shows it (tests/test_settlement.py)."""
    order = new_order()
    email = order["customer"]["email"]
    fakes.hang_next(email, 2.0)
    config = dataclasses.replace(provider_config, request_timeout=0.5)
    async with make_harness(ts_env, config=config) as h:
        handle = await h.start(order)
        view = await h.wait_for(handle, lambda v: len(v.touchpoints) == 2)
        await handle.terminate("test done")
    assert kinds(view) == [("order_confirmation", "email", "in_doubt"), ("order_confirmation", "email", "sent")]
    assert "did not answer" in view.touchpoints[0].error
    assert not view.needs_attention
    assert len(fakes.deliveries_to(email)) == 1
