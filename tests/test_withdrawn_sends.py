"""A send the journey overtakes (issue 16 items 3 and 12).

A message the journey overtakes before it goes is withdrawn, not sent late.
What the order then records must be true of what the provider has:

- no attempt yet (it waited for quiet hours): superseded, at no extra cost;
- an attempt that got no answer (a read timeout: the provider may have it):
  settled without sending, looked up as a mail in doubt is (an SMS at
  Twilio at once, a mail once SendGrid can show it), and recorded sent if
  the provider has it;
- an attempt still talking to the provider: let finish, its outcome kept.

Each holds its send deterministically: the fake provider takes the message
and answers late (within the client's timeout, or past it), so the
withdrawal comes while the attempt runs, on the dev server (the
time-skipping one never resolves the cancellation of an activity whose
attempt fails after it was asked to cancel: it hangs, like the fault
Harness.wait_queues_empty describes); or a look-up failing for now keeps
the send in its retry backoff."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from temporalio.client import WorkflowHandle

from tests.conftest import Harness, new_order, payment_for
from tests.fake_providers import AcceptedMessage, FakeProviders
from tests.test_customer_journey import own_clock  # noqa: F401 (fixture)
from tests.test_exactly_once import ledger
from tests.test_quiet_hours import at_local, local_day, skip_to
from workflows.ledger_key import LedgerKey
from workflows.models import OrderStatusView

# Past the tests' PROVIDER_TIMEOUT (5 s): the client gives up, the provider has it.
ANSWERED_TOO_LATE = 8.0
# Within it: the attempt is still talking to the provider when overtaken.
ANSWERED_SLOWLY = 3.0


def states_of(view: OrderStatusView, kind: str, channel: str) -> list[str]:
    return [t.state.value for t in view.touchpoints if t.kind.value == kind and t.channel.value == channel]


def key_of(order: dict[str, Any], kind: str, channel: str) -> str:
    return str(LedgerKey.of_order(order["order_id"], kind, channel))


async def taken_by_provider(fakes: FakeProviders, recipient: str, n: int) -> AcceptedMessage:
    """The `n`th message the fake took for `recipient`, once it has."""
    for _ in range(400):
        taken = [m for m in list(fakes.accepted) if m.recipient == recipient]
        if len(taken) >= n:
            return taken[n - 1]
        await asyncio.sleep(0.05)
    raise AssertionError(f"the provider never took message {n}")


async def dispatched(h: Harness, handle: WorkflowHandle, order: dict[str, Any]) -> None:
    await handle.signal("payment_received", payment_for(order))
    await h.wait_touchpoint(handle, "payment_confirmation")
    await handle.signal("order_dispatched", {"carrier": "DHL", "tracking_number": "W1", "expected_delivery": await h.tomorrow()})


@pytest.mark.parametrize(
    "answered_after",
    [ANSWERED_SLOWLY, ANSWERED_TOO_LATE],
    ids=["an attempt still talking to Twilio (item 12)", "an attempt Twilio never answered in time"],
)
async def test_an_sms_overtaken_while_twilio_has_it_is_recorded_sent(
    dev_env, make_harness, fakes: FakeProviders, pool, answered_after: float
):
    """Twilio takes the dispatch SMS and answers `answered_after` later; the
    parcel is delivered meanwhile. Answered in time, the attempt is let
    finish and its outcome kept; answered too late, the SMS is looked up at
    Twilio. Either way: recorded sent with its SID, never superseded, and not
    sent again."""
    order = new_order()
    phone = order["customer"]["phone"]
    fakes.hang_next(phone, answered_after)
    async with make_harness(dev_env) as h:
        handle = await h.start(order)
        await dispatched(h, handle, order)
        taken = await taken_by_provider(fakes, phone, 1)
        await handle.signal("order_delivered", {"delivered_at": await h.now_iso()})
        view = await h.wait_for(handle, lambda v: states_of(v, "dispatch_notice", "sms"))
        await handle.terminate("test done")
    assert states_of(view, "dispatch_notice", "sms") == ["sent"]
    [sms] = [t for t in view.touchpoints if t.kind.value == "dispatch_notice" and t.channel.value == "sms"]
    assert sms.provider_message_id == taken.provider_id
    row = await ledger(pool, key_of(order, "dispatch_notice", "sms"))
    assert (row["state"], row["provider_message_id"]) == ("sent", taken.provider_id)
    assert len(fakes.deliveries_to(phone)) == 1


async def test_a_mail_overtaken_after_sendgrid_took_it_unanswered_is_settled_and_recorded_sent(
    dev_env, make_harness, fakes: FakeProviders, pool
):
    """SendGrid takes the payment confirmation and answers after the client
    gave up; the order is dispatched meanwhile. The mail is in doubt until
    SendGrid's Email Activity can show it, then recorded sent, never
    superseded; the dispatch notice does not wait for that."""
    order = new_order()
    email = order["customer"]["email"]
    async with make_harness(dev_env) as h:
        handle = await h.start(order)
        await h.wait_touchpoint(handle, "order_confirmation")
        fakes.hang_next(email, ANSWERED_TOO_LATE)
        await handle.signal("payment_received", payment_for(order))
        taken = await taken_by_provider(fakes, email, 2)
        await handle.signal("order_dispatched", {"carrier": "DHL", "tracking_number": "W2", "expected_delivery": await h.tomorrow()})
        view = await h.wait_for(
            handle, lambda v: states_of(v, "payment_confirmation", "email")[-1:] not in ([], ["in_doubt"]), timeout=40
        )
        view = await h.wait_queues_empty(handle)
        await handle.terminate("test done")
    assert states_of(view, "payment_confirmation", "email") == ["in_doubt", "sent"]
    assert not view.needs_attention, view.attention_reasons
    row = await ledger(pool, key_of(order, "payment_confirmation", "email"))
    assert (row["state"], row["provider_message_id"]) == ("sent", taken.provider_id)
    assert states_of(view, "dispatch_notice", "email") == ["sent"]
    assert len([m for m in fakes.accepted if m.key == key_of(order, "payment_confirmation", "email")]) == 1


async def test_an_sms_overtaken_in_the_night_after_an_unanswered_attempt_is_looked_up_at_once(
    own_clock, make_harness, fakes: FakeProviders, pool  # noqa: F811
):
    """Twilio took the dispatch SMS at 20:58 but its gateway answered 504, and
    looking it up fails for now: the send waits for its next retry. The
    parcel is delivered at 21:30, in the customer's quiet hours. A look-up
    reaches no customer: it is made at once, not in the morning, and the SMS
    recorded sent."""
    env = own_clock
    async with make_harness(env, quiet_hours=True) as h:
        day = local_day(await h.now()) + timedelta(days=1)
        await skip_to(env, at_local(day, 20, 58))
        order = new_order()
        phone = order["customer"]["phone"]
        handle = await h.start(order)
        fakes.fail_next(phone, 504)
        fakes.fail_next_lookup(phone, *[503] * 100)
        try:
            await dispatched(h, handle, order)
            taken = await taken_by_provider(fakes, phone, 1)
            withdrawn_at = at_local(day, 21, 30)
            await skip_to(env, withdrawn_at)
            await handle.signal("order_delivered", {"delivered_at": await h.now_iso()})
            await h.wait_for(handle, lambda v: v.status == "delivered")
        finally:
            fakes.end_lookup_faults(phone)
        view = await h.wait_for(handle, lambda v: states_of(v, "dispatch_notice", "sms"))
        await handle.terminate("test done")
    [sms] = [t for t in view.touchpoints if t.kind.value == "dispatch_notice" and t.channel.value == "sms"]
    assert (sms.state.value, sms.provider_message_id) == ("sent", taken.provider_id)
    assert withdrawn_at <= sms.at <= withdrawn_at + timedelta(minutes=1)
    assert len(fakes.deliveries_to(phone)) == 1


async def test_an_sms_overtaken_before_its_first_attempt_is_superseded_without_an_activity(
    own_clock, make_harness, fakes: FakeProviders, pool  # noqa: F811
):
    """The dispatch SMS waits for the customer's morning; the parcel is
    delivered in the night. Nothing was attempted: it is superseded, with no
    send_message activity (each attempt is billed) and no ledger row."""
    env = own_clock
    async with make_harness(env, quiet_hours=True) as h:
        day = local_day(await h.now()) + timedelta(days=1)
        await skip_to(env, at_local(day, 22))
        order = new_order()
        handle = await h.start(order)
        await dispatched(h, handle, order)
        await h.wait_touchpoint(handle, "dispatch_notice", "email")
        await handle.signal("order_delivered", {"delivered_at": await h.now_iso()})
        view = await h.wait_for(handle, lambda v: states_of(v, "dispatch_notice", "sms"))
        view = await h.wait_touchpoint(handle, "delivery_confirmation")
        history = await handle.fetch_history()
        await handle.terminate("test done")
    assert states_of(view, "dispatch_notice", "sms") == ["superseded"]
    sends = [e for e in history.events if e.activity_task_scheduled_event_attributes.activity_type.name == "send_message"]
    assert len(sends) == len([t for t in view.touchpoints if t.state.value != "superseded"])
    assert await ledger(pool, key_of(order, "dispatch_notice", "sms")) is None
    assert fakes.deliveries_to(order["customer"]["phone"]) == []
