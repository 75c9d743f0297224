"""Every deadline on both sides: a minute before its moment nothing has
happened, a minute after it has, and so again when the order has continued
as new in between (the next run counts from the same moments). Moments come
from the events they belong to: the workflow's start, the payment, the end
of the expected day in the customer's timezone, the carrier's delivered_at.
Then the SMS quiet hours' exemption for the delivery-day notice, and a
deferred message dropped as stale.

The time-skipping server runs every timer due before the moment it is moved
to, and the work that timer starts, before it gets there: so a status read
just after the move shows whatever the journey did up to then. None of these
is about a message overtaken: each event waits until the messages of the one
before are sent (see Harness.wait_queues_empty)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from tests.conftest import Harness, continue_as_new, new_order, payment_for
from tests.fake_providers import FakeProviders
from tests.test_consent_journey import zone_where_it_is
from tests.test_journey import kinds
from workflows.models import OrderStatusView

MINUTE = timedelta(minutes=1)
# 14 hours ahead of UTC: its day ends at 10:00 UTC, so from noon UTC on the
# customer's date is UTC's next day.
FAR_EAST = "Pacific/Kiritimati"

continued = pytest.mark.parametrize("continued", [False, True], ids=["one run", "continued as new"])


async def move_to(h: Harness, env: WorkflowEnvironment, moment: datetime) -> None:
    now = await h.now()
    assert moment > now, f"{moment} is already past ({now})"
    await env.sleep(moment - now)


async def half_a_day_on(h: Harness, env: WorkflowEnvironment, handle: WorkflowHandle, continued: bool) -> WorkflowHandle:
    """Twelve hours on, then, if asked for, a continue-as-new: a next run that
    counted from its own start would be half a day late. The order's handle
    from here on."""
    await env.sleep(timedelta(hours=12))
    if continued:
        return await continue_as_new(h, handle)
    return h.client.get_workflow_handle(handle.id, result_type=OrderStatusView)


async def before_and_after(
    h: Harness, env: WorkflowEnvironment, handle: WorkflowHandle, moment: datetime, happened: Callable[[OrderStatusView], bool]
) -> None:
    """A minute before `moment` the journey has not `happened`; a minute after, it has."""
    await move_to(h, env, moment - MINUTE)
    view = await handle.query("status", result_type=OrderStatusView)
    assert not happened(view), f"a minute before {moment}: {view.status}, {kinds(view)}, {view.attention_reasons}"
    await move_to(h, env, moment + MINUTE)
    await h.wait_for(handle, happened)


def has(kind: str, channel: str = "email") -> Callable[[OrderStatusView], bool]:
    """Whether `kind` has reached its channel, or waits for it."""
    return lambda v: any(t.kind.value == kind and t.channel.value == channel for t in v.touchpoints) or (
        f"{kind}:{channel}" in v.queued_messages
    )


def sent(kind: str, channel: str = "email") -> Callable[[OrderStatusView], bool]:
    return lambda v: (kind, channel, "sent") in kinds(v)


def flagged(reason: str) -> Callable[[OrderStatusView], bool]:
    return lambda v: reason in v.attention_reasons


def status(value: str) -> Callable[[OrderStatusView], bool]:
    return lambda v: v.status == value


def texts_to(fakes: FakeProviders, recipient: str, words: str) -> list[str]:
    return [text for text in fakes.deliveries_to(recipient) if words in text]


async def started_at(handle: WorkflowHandle) -> datetime:
    return (await handle.describe()).start_time


@continued
async def test_payment_reminder_and_payment_deadline_count_from_the_start(
    ts_env: WorkflowEnvironment, make_harness, fakes: FakeProviders, continued: bool
):
    order = new_order()
    email = order["customer"]["email"]
    async with make_harness(ts_env) as h:
        handle = await h.start(order)
        start = await started_at(handle)
        await h.wait_touchpoint(handle, "order_confirmation")
        handle = await half_a_day_on(h, ts_env, handle, continued)

        await before_and_after(h, ts_env, handle, start + timedelta(hours=24), has("payment_reminder"))
        await h.wait_for(handle, sent("payment_reminder"))
        assert len(texts_to(fakes, email, "Payment pending for order")) == 1
        await before_and_after(h, ts_env, handle, start + timedelta(hours=72), status("cancelled"))
        view = await h.wait_for(handle, sent("order_cancelled"))
    assert view.status == "cancelled"
    assert view.cancellation_reason == "payment not received within 72 hours"


@continued
async def test_dispatch_promise_and_dispatch_deadline_count_from_the_payment(
    ts_env: WorkflowEnvironment, make_harness, continued: bool
):
    """Paid 20 hours after the start: counted from the start, the apology
    would be due 20 hours early, and the cancellation too."""
    order = new_order()
    async with make_harness(ts_env) as h:
        handle = await h.start(order)
        start = await started_at(handle)
        await h.wait_touchpoint(handle, "order_confirmation")
        await move_to(h, ts_env, start + timedelta(hours=20))
        paid = await h.now()
        await handle.signal("payment_received", payment_for(order))
        await h.wait_touchpoint(handle, "payment_confirmation")
        handle = await half_a_day_on(h, ts_env, handle, continued)

        apologised = lambda v: flagged("dispatch_late")(v) or has("dispatch_delayed")(v)  # noqa: E731
        await before_and_after(h, ts_env, handle, paid + timedelta(hours=48), apologised)
        view = await h.wait_for(handle, sent("dispatch_delayed"))
        assert view.attention_reasons == ["dispatch_late"]
        await before_and_after(h, ts_env, handle, paid + timedelta(days=7), status("cancelled"))
        view = await h.wait_for(handle, sent("order_cancelled"))
    assert view.status == "cancelled"
    assert view.cancellation_reason == "not dispatched within 7 days of payment; a full refund follows"


@continued
async def test_delivery_grace_and_delivery_deadline_count_from_the_end_of_the_expected_day_where_the_customer_is(
    ts_env: WorkflowEnvironment, make_harness, continued: bool
):
    """Noon UTC, 02:00 the next day for a customer on Kiritimati: the parcel
    is expected on the customer's tomorrow, whose end is 14 hours before the
    end of that date in UTC."""
    order = new_order()
    order["customer"]["timezone"] = FAR_EAST
    async with make_harness(ts_env) as h:
        now = await h.now()
        noon = datetime.combine(now.date() + timedelta(days=1), time(12), timezone.utc)
        await move_to(h, ts_env, noon)
        customers_today = noon.astimezone(ZoneInfo(FAR_EAST)).date()
        assert customers_today != noon.date()
        expected = customers_today + timedelta(days=1)
        end_of_expected_day = datetime.combine(expected + timedelta(days=1), time(0), ZoneInfo(FAR_EAST))

        handle = await h.start(order)
        await handle.signal("payment_received", payment_for(order))
        await h.wait_touchpoint(handle, "payment_confirmation")
        await handle.signal(
            "order_dispatched", {"carrier": "GLS", "tracking_number": "G2", "expected_delivery": expected.isoformat()}
        )
        await h.wait_touchpoint(handle, "dispatch_notice", "sms")
        handle = await half_a_day_on(h, ts_env, handle, continued)

        late = lambda v: flagged("delivery_late")(v) or has("delivery_delayed")(v)  # noqa: E731
        await before_and_after(h, ts_env, handle, end_of_expected_day + timedelta(days=1), late)
        view = await h.wait_for(handle, sent("delivery_delayed"))
        assert view.attention_reasons == ["delivery_late"]
        await before_and_after(h, ts_env, handle, end_of_expected_day + timedelta(days=14), status("lost"))
        view = await h.wait_for(handle, sent("parcel_lost"))
    assert view.status == "lost"
    assert view.attention_reasons == ["delivery_late", "parcel_lost"]


@continued
async def test_locker_reminder_and_pickup_deadline_count_from_the_carriers_delivered_at(
    ts_env: WorkflowEnvironment, make_harness, fakes: FakeProviders, continued: bool
):
    """The carrier delivered 10 hours before the event reached us: the
    reminder is due 48 hours after its delivered_at, the deadline 72."""
    order = new_order(delivery={"method": "locker", "locker_id": "WAW-10", "locker_name": "Locker WAW-10"})
    phone = order["customer"]["phone"]
    async with make_harness(ts_env) as h:
        handle = await h.start(order)
        await handle.signal("payment_received", payment_for(order))
        await h.wait_touchpoint(handle, "payment_confirmation")
        await handle.signal(
            "order_dispatched", {"carrier": "InPost", "tracking_number": "IP10", "expected_delivery": await h.tomorrow()}
        )
        await h.wait_touchpoint(handle, "dispatch_notice", "sms")
        await h.wait_queues_empty(handle)
        delivered_at = await h.now() - timedelta(hours=10)
        await handle.signal("order_delivered", {"delivered_at": delivered_at.isoformat(), "locker_pickup_code": "1010"})
        await h.wait_touchpoint(handle, "delivery_confirmation")
        handle = await half_a_day_on(h, ts_env, handle, continued)

        await before_and_after(h, ts_env, handle, delivered_at + timedelta(hours=48), has("locker_reminder", "sms"))
        await h.wait_for(handle, sent("locker_reminder", "sms"))
        assert len(texts_to(fakes, phone, "Locker WAW-10")) == 1
        await before_and_after(h, ts_env, handle, delivered_at + timedelta(hours=72), flagged("locker_not_collected"))


# --- SMS quiet hours: the delivery-day exemption, and staleness ------------------------


async def dispatched_at_seven_in_the_evening(h: Harness, order: dict) -> tuple[WorkflowHandle, ZoneInfo]:
    """An order dispatched at 19:xx where its customer is, its dispatch SMS
    sent at once: nothing waits in the SMS lane."""
    zone = zone_where_it_is(19, await h.now())
    order["customer"]["timezone"] = zone
    handle = await h.start(order)
    await handle.signal("payment_received", payment_for(order))
    await h.wait_touchpoint(handle, "payment_confirmation")
    await handle.signal(
        "order_dispatched", {"carrier": "DHL", "tracking_number": "Q1", "expected_delivery": await h.tomorrow()}
    )
    await h.wait_for(handle, lambda v: ("dispatch_notice", "sms", "sent") in kinds(v) and not v.queued_messages)
    return handle, ZoneInfo(zone)


def local(moment: datetime, zone: ZoneInfo, day_offset: int, at: time) -> datetime:
    """`at` o'clock, `day_offset` days after `moment`'s date, where `zone` is."""
    return datetime.combine(moment.astimezone(zone).date() + timedelta(days=day_offset), at, zone)


def sms_of(view: OrderStatusView, kind: str):
    return next(t for t in view.touchpoints if t.kind.value == kind and t.channel.value == "sms")


async def test_the_delivery_day_notice_goes_in_quiet_hours_on_its_day(ts_env: WorkflowEnvironment, make_harness):
    order = new_order()
    async with make_harness(ts_env, quiet_hours=True) as h:
        handle, zone = await dispatched_at_seven_in_the_evening(h, order)
        seven_am = local(await h.now(), zone, 1, time(7))
        await move_to(h, ts_env, seven_am)
        await handle.signal("out_for_delivery", {"date": seven_am.date().isoformat()})
        view = await h.wait_for(handle, lambda v: ("delivery_day", "sms", "sent") in kinds(v))
    assert sms_of(view, "delivery_day").at.astimezone(zone).hour == 7


async def test_a_delivery_day_notice_before_its_day_waits_for_the_morning(
    ts_env: WorkflowEnvironment, make_harness, fakes: FakeProviders
):
    """Announced at 23:00 for the next day: not its day yet, so quiet hours
    hold it until 08:00."""
    order = new_order()
    phone = order["customer"]["phone"]
    async with make_harness(ts_env, quiet_hours=True) as h:
        handle, zone = await dispatched_at_seven_in_the_evening(h, order)
        eleven_pm = local(await h.now(), zone, 0, time(23))
        await move_to(h, ts_env, eleven_pm)
        await handle.signal("out_for_delivery", {"date": (eleven_pm.date() + timedelta(days=1)).isoformat()})
        await h.wait_for(handle, lambda v: v.status == "out_for_delivery")
        await before_and_after(h, ts_env, handle, local(eleven_pm, zone, 1, time(8)), sent("delivery_day", "sms"))
        view = await handle.query("status", result_type=OrderStatusView)
    sent_at = sms_of(view, "delivery_day").at.astimezone(zone)
    assert (sent_at.hour, sent_at.minute) == (8, 0), sent_at
    assert len(texts_to(fakes, phone, "out for delivery today")) == 1


@pytest.mark.parametrize(
    "window, goes",
    [(timedelta(hours=10), True), (timedelta(hours=9), False)],
    ids=["pickup deadline after the morning: sent then", "pickup deadline before the morning: stale"],
)
async def test_a_locker_reminder_held_by_quiet_hours_goes_in_the_morning_unless_its_deadline_passed(
    ts_env: WorkflowEnvironment, make_harness, fakes: FakeProviders, window: timedelta, goes: bool
):
    """Delivered at 22:55 with a pickup window of `window` and the reminder
    due a minute later, reported at 23:00: the reminder waits for 08:00, and
    goes then while the pickup deadline (08:55) is still ahead, or is dropped
    as stale when that deadline (07:55) would be past by then."""
    lead = window - MINUTE
    order = new_order(
        delivery={"method": "locker", "locker_id": "WAW-11", "locker_name": "Locker WAW-11"},
        journey={"locker_pickup_window": f"PT{window.total_seconds():.0f}S", "locker_reminder_before": f"PT{lead.total_seconds():.0f}S"},
    )
    phone = order["customer"]["phone"]
    async with make_harness(ts_env, quiet_hours=True) as h:
        handle, zone = await dispatched_at_seven_in_the_evening(h, order)
        eleven_pm = local(await h.now(), zone, 0, time(23))
        await move_to(h, ts_env, eleven_pm)
        delivered_at = eleven_pm - timedelta(minutes=5)
        await handle.signal("order_delivered", {"delivered_at": delivered_at.isoformat(), "locker_pickup_code": "1111"})
        if goes:
            await before_and_after(h, ts_env, handle, local(eleven_pm, zone, 1, time(8)), sent("locker_reminder", "sms"))
            view = await handle.query("status", result_type=OrderStatusView)
            sent_at = sms_of(view, "locker_reminder").at.astimezone(zone)
            assert (sent_at.hour, sent_at.minute) == (8, 0), sent_at
        else:
            view = await h.wait_for(handle, lambda v: ("locker_reminder", "sms", "stale") in kinds(v))
            assert "locker_reminder:sms" not in view.queued_messages
    assert len(texts_to(fakes, phone, "Locker WAW-11")) == (1 if goes else 0)
