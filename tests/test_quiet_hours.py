"""SMS quiet hours kept before every attempt (issue 16 items 4 and 10).

An SMS due in the customer's night waits for their morning. Not only when it
is first due: a wait for the marketing cap, a paused provider or the send
activity's own retries may end in the night too, and the workflow checks
again before each attempt; the activity itself refuses an SMS inside quiet
hours (the server retries it without the workflow), answering DEFERRED to
the morning, so the workflow waits and sends it then. Each test checks both
sides: not before the morning, and by it. The delivery-day notice goes
whatever the hour on its day, and keeps quiet hours after midnight.

The workflow tests move the time-skipping server's clock to the customer's
evening (Europe/Warsaw unless said otherwise), one server per test."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

import pytest
from temporalio.client import WorkflowHandle
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.config import ProviderConfig
from activities.messaging import MessagingActivities
from providers import RenderedMessage
from providers.twilio import TwilioSms
from tests.conftest import Harness, new_order, payment_for, store
from tests.fake_providers import FakeProviders
from tests.test_customer_journey import own_clock  # noqa: F401 (fixture)
from tests.test_exactly_once import ledger, recorded_order, request_for, requests_to
from tests.test_sending import WorkerDied
import worker
from workflows.clock import zone
from workflows.ledger_key import LedgerKey
from workflows.models import (
    Channel,
    CustomerState,
    CustomerView,
    DeliveryState,
    JourneySettings,
    LifecycleSettings,
    OrderFacts,
    OrderNews,
    OrderStatusView,
    QuietHours,
    Touchpoint,
    TouchpointRecord,
)

TZ = "Europe/Warsaw"
# The journey's defaults: no SMS from 21:00 to 08:00 local time.
QUIET = QuietHours(timezone=TZ, quiet_from=timedelta(hours=21), quiet_until=timedelta(hours=8))


def at_local(day: date, hour: int, minute: int = 0, tz: str = TZ) -> datetime:
    """`hour:minute` on `day` in `tz`, in UTC."""
    return datetime.combine(day, time(hour, minute), zone(tz)).astimezone(timezone.utc)


def local_day(moment: datetime, tz: str = TZ) -> date:
    return moment.astimezone(zone(tz)).date()


async def skip_to(env: WorkflowEnvironment, moment: datetime) -> None:
    """Move the server's clock on to `moment`; timers and retries due meanwhile fire."""
    now = await env.get_current_time()
    assert moment > now, f"{moment} has passed already ({now})"
    await env.sleep(moment - now)


def only_sms(view: OrderStatusView, kind: str) -> TouchpointRecord:
    [sms] = [t for t in view.touchpoints if t.kind.value == kind and t.channel is Channel.SMS]
    return sms


def went_when_due(sent_at: datetime, due: datetime) -> None:
    """Not before `due` (in the night), and by it (a minute for the send itself)."""
    local = sent_at.astimezone(zone(TZ))
    assert sent_at >= due, f"sent at {local:%Y-%m-%d %H:%M:%S %Z}, before {due.astimezone(zone(TZ)):%H:%M}"
    assert sent_at <= due + timedelta(minutes=1), f"sent at {local:%Y-%m-%d %H:%M:%S %Z}, after {due.astimezone(zone(TZ)):%H:%M}"


async def sms_sent_when_due(h: Harness, handle: WorkflowHandle, kind: str, due: datetime) -> None:
    """Past `due`, the order's `kind` by SMS went once: not before `due`, and by it."""
    await skip_to(h.env, due + timedelta(minutes=5))
    view = await h.wait_touchpoint(handle, kind, "sms")
    await handle.terminate("test done")
    sms = only_sms(view, kind)
    assert sms.state is DeliveryState.SENT
    went_when_due(sms.at, due)


# --- the send activity's own check ---------------------------------------------------------


def attempt_at(moment: datetime, number: int = 1) -> ActivityEnvironment:
    """One attempt of the activity, scheduled by the server at `moment`."""
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info, attempt=number, start_to_close_timeout=timedelta(seconds=60), current_attempt_scheduled_time=moment
    )
    return env


TRACKING = {"carrier": "DHL", "tracking_number": "Q0", "expected_delivery": "2027-01-16"}


def sms_request(order: dict[str, Any], kind: Touchpoint = Touchpoint.DISPATCH_NOTICE, quiet: QuietHours = QUIET):
    return request_for(order, Channel.SMS, kind).model_copy(update={"details": TRACKING, "quiet_hours": quiet})


async def test_the_send_activity_refuses_an_sms_inside_quiet_hours_and_takes_no_ledger_slot(
    pool, fakes: FakeProviders, provider_config: ProviderConfig
):
    """By the server's clock for the attempt, not the wall clock: at 23:00
    local DEFERRED to 08:00, with no row registered and no request; at 08:00
    it goes."""
    order = await recorded_order(pool)
    messaging = MessagingActivities(pool, provider_config)
    request = sms_request(order)
    night = at_local(date(2027, 1, 14), 23)
    morning = at_local(date(2027, 1, 15), 8)
    outcome = await attempt_at(night).run(messaging.send_message, request)
    assert (outcome.state, outcome.not_before) == (DeliveryState.DEFERRED, morning)
    assert await ledger(pool, request.key) is None
    assert requests_to(fakes, order["customer"]["phone"]) == []
    # A retry the server makes in the night gets the same answer.
    again = await attempt_at(night + timedelta(hours=1), number=5).run(messaging.send_message, request)
    assert (again.state, again.not_before) == (DeliveryState.DEFERRED, morning)
    assert (await attempt_at(morning).run(messaging.send_message, request)).state is DeliveryState.SENT
    assert len(fakes.deliveries_to(order["customer"]["phone"])) == 1


async def test_the_send_activity_lets_the_delivery_day_sms_go_at_night_on_its_day_only(
    pool, fakes: FakeProviders, provider_config: ProviderConfig
):
    day = date(2027, 1, 14)
    on_its_day, next_day = await recorded_order(pool), await recorded_order(pool)
    messaging = MessagingActivities(pool, provider_config)
    exempt = QUIET.model_copy(update={"exempt_on": day})
    late = await attempt_at(at_local(day, 23, 30)).run(
        messaging.send_message, sms_request(on_its_day, Touchpoint.DELIVERY_DAY, exempt)
    )
    assert late.state is DeliveryState.SENT
    past_midnight = await attempt_at(at_local(day + timedelta(days=1), 0, 30)).run(
        messaging.send_message, sms_request(next_day, Touchpoint.DELIVERY_DAY, exempt)
    )
    assert (past_midnight.state, past_midnight.not_before) == (DeliveryState.DEFERRED, at_local(day + timedelta(days=1), 8))
    assert fakes.deliveries_to(next_day["customer"]["phone"]) == []


class SmsLostBeforeRequest(TwilioSms):
    """The worker dies after claiming the row, before the SMS's request leaves."""

    async def send(self, message: RenderedMessage) -> str:
        raise WorkerDied("worker killed before the SMS's request left")


@pytest.mark.parametrize("arrived", [False, True])
async def test_a_retry_in_the_night_looks_up_what_an_earlier_attempt_may_have_sent_and_sends_nothing_new(
    pool, fakes: FakeProviders, provider_config: ProviderConfig, arrived: bool
):
    """An earlier attempt may have reached Twilio. A retry inside quiet
    hours looks it up: found, it is sent (nothing more goes); not found, the
    row is put back (nothing went out) and the SMS DEFERRED to the morning."""
    order = await recorded_order(pool)
    request = sms_request(order)
    evening = at_local(date(2027, 1, 14), 20, 50)
    first = MessagingActivities(pool, provider_config, {Channel.SMS: SmsLostBeforeRequest(provider_config)})
    if arrived:
        fakes.fail_next(order["customer"]["phone"], 504)  # Twilio took it; its gateway gave up
        first = MessagingActivities(pool, provider_config)
    with pytest.raises(Exception):
        await attempt_at(evening).run(first.send_message, request)
    assert (await ledger(pool, request.key))["state"] == "sending"
    retry = await attempt_at(at_local(date(2027, 1, 14), 22), number=2).run(
        MessagingActivities(pool, provider_config).send_message, request
    )
    if arrived:
        assert retry.state is DeliveryState.SENT
        assert (await ledger(pool, request.key))["state"] == "sent"
    else:
        assert (retry.state, retry.not_before) == (DeliveryState.DEFERRED, at_local(date(2027, 1, 15), 8))
        assert (await ledger(pool, request.key))["state"] == "pending"
    assert len(fakes.deliveries_to(order["customer"]["phone"])) == int(arrived)


# --- in whole journeys -----------------------------------------------------------------------


EVENINGS = {
    "an ordinary evening": (None, None),
    # Clocks go forward that night: 08:00 CEST is 06:00 UTC (21:00 CET was 20:00 UTC).
    "the evening before the spring change": (date(2027, 3, 27), datetime(2027, 3, 28, 6, tzinfo=timezone.utc)),
    # Clocks go back that night: 08:00 CET is 07:00 UTC (21:00 CEST was 19:00 UTC).
    "the evening before the autumn change": (date(2027, 10, 30), datetime(2027, 10, 31, 7, tzinfo=timezone.utc)),
}


@pytest.mark.parametrize("evening", list(EVENINGS.values()), ids=list(EVENINGS))
async def test_an_sms_retried_after_an_outage_into_the_night_goes_the_next_morning(
    own_clock, make_harness, fakes: FakeProviders, evening  # noqa: F811
):
    """Twilio is down from 20:40 to 22:30: the dispatch SMS, due at 20:40,
    is retried by the server until Twilio is back, in the night. It goes at
    08:00 the next morning, not at 22:31, across a change of the clocks too."""
    day, expected_morning = evening
    env = own_clock
    async with make_harness(env, quiet_hours=True) as h:
        day = day or local_day(await h.now()) + timedelta(days=1)
        morning = at_local(day + timedelta(days=1), 8)
        assert expected_morning in (None, morning)
        await skip_to(env, at_local(day, 20, 40))
        order = new_order()
        phone = order["customer"]["phone"]
        handle = await h.start(order)
        await handle.signal("payment_received", payment_for(order))
        fakes.start_outage("sms")
        try:
            dispatch = {"carrier": "DHL", "tracking_number": "Q1", "expected_delivery": (day + timedelta(days=2)).isoformat()}
            await handle.signal("order_dispatched", dispatch)
            await h.wait_touchpoint(handle, "dispatch_notice", "email")
            await skip_to(env, at_local(day, 22, 30))
        finally:
            fakes.end_outage("sms")
        await sms_sent_when_due(h, handle, "dispatch_notice", morning)
    assert len(fakes.deliveries_to(phone)) == 1


async def test_an_sms_held_by_a_paused_provider_goes_the_next_morning_not_when_it_resumes_in_the_night(
    own_clock, make_harness, fakes: FakeProviders, provider_config: ProviderConfig, monkeypatch  # noqa: F811
):
    """Twilio rejects our credentials at 20:30: SMS are paused, and the order
    tries again an hour later (paused_channel_retry), at 21:30, when the
    credentials work again. That is in the night: it goes at 08:00."""
    env = own_clock
    secret = f"revoked{uuid.uuid4().hex[:12]}"
    fakes.revoke(secret)
    workers_messaging: list[MessagingActivities] = []

    class Kept(MessagingActivities):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            workers_messaging.append(self)

    monkeypatch.setattr(worker, "MessagingActivities", Kept)
    revoked = dataclasses.replace(provider_config, twilio_auth_token=secret)
    journey = JourneySettings(paused_channel_retry=timedelta(hours=1))
    async with make_harness(env, journey=journey, quiet_hours=True, config=revoked) as h:
        day = local_day(await h.now()) + timedelta(days=1)
        morning = at_local(day + timedelta(days=1), 8)
        await skip_to(env, at_local(day, 20, 30))
        order = new_order()
        handle = await h.start(order)
        await handle.signal("payment_received", payment_for(order))
        dispatch = {"carrier": "DHL", "tracking_number": "Q2", "expected_delivery": (day + timedelta(days=2)).isoformat()}
        await handle.signal("order_dispatched", dispatch)
        await h.wait_for(handle, lambda v: "provider_misconfigured:sms" in v.attention_reasons)
        # Fixed: the credentials work again, and the worker was restarted
        # (the pause lasts as long as its process; a restart on the
        # time-skipping server leaves a stale poll holding its clock).
        fakes.restore(secret)
        [messaging] = workers_messaging
        messaging._paused.clear()
        await sms_sent_when_due(h, handle, "dispatch_notice", morning)


@pytest.mark.long(33)
async def test_a_marketing_sms_whose_cap_deferral_ends_in_the_night_goes_the_next_morning(
    own_clock, make_harness, pool, fakes: FakeProviders, provider_config: ProviderConfig  # noqa: F811
):
    """The customer's welcome goes by SMS (no consent for marketing email)
    and the marketing cap defers it until a slot frees, which is after their
    quiet hours have begun: it goes when they end, not when the slot frees.
    The cap counts by PostgreSQL's clock, which the server's skipping does not
    move: so quiet hours begin 20 s from now (customer in UTC), the slot frees
    in 30 s, and they end 10 hours from now."""
    env = own_clock
    config = dataclasses.replace(provider_config, marketing_cap=1)
    async with make_harness(env, config=config) as h:
        order = new_order()
        order["customer"].update(timezone="UTC", marketing_consent={"email": False, "sms": True})
        cid, phone = order["customer"]["customer_id"], order["customer"]["phone"]
        await store(pool, order)
        now = await h.now()
        midnight = datetime.combine(now.date(), time(0), timezone.utc)
        quiet_from, morning = now + timedelta(seconds=20), now + timedelta(hours=10)
        settings = LifecycleSettings(
            sms_quiet_from=(quiet_from - midnight) % timedelta(days=1), sms_quiet_until=(morning - midnight) % timedelta(days=1)
        )
        # An earlier marketing message holds the cap's one slot until then.
        frees_at = await pool.fetchval("SELECT now() + interval '30 seconds'")
        await pool.execute(
            "INSERT INTO message_ledger (key, order_id, customer_id, message_class, kind, channel, recipient, state, created_at)"
            " VALUES ($1, $2, $3, 'marketing', 'loyalty_reward', 'email', 'x', 'sent', $4)",
            str(LedgerKey(f"customer-{cid}", Touchpoint.LOYALTY_REWARD, Channel.EMAIL, "earlier")), order["order_id"], cid,
            frees_at - config.marketing_cap_window,
        )
        facts = OrderFacts(order_id=order["order_id"], placed_at=now, total="109.90")
        customer = h.client.get_workflow_handle(f"customer-{cid}")
        await h.client.start_workflow(
            "CustomerJourney",
            CustomerState(customer_id=cid, settings=settings, phase_since=now).model_dump(mode="json"),
            id=customer.id,
            task_queue=h.task_queue,
            start_signal="order_news",
            start_signal_args=[OrderNews(event="placed", order=facts, timezone="UTC", has_phone=True).model_dump(mode="json")],
        )
        h.started.append(customer)
        delivered = facts.model_copy(update={"delivered_at": now, "status": "delivered"})
        await customer.signal(
            "order_news", OrderNews(event="delivered", order=delivered, timezone="UTC", has_phone=True).model_dump(mode="json")
        )
        welcome = str(LedgerKey(customer.id, Touchpoint.WELCOME, Channel.SMS, "first-order"))
        # Deferred by the cap, before quiet hours began.
        await h.wait_for(customer, lambda v: any(key.endswith(":welcome:first-order:email") for key in v.messages), view_type=CustomerView)
        assert await ledger(pool, welcome) is None
        # The slot frees, in the night: nothing goes.
        await asyncio.sleep((frees_at - await pool.fetchval("SELECT now()")).total_seconds() + 3)
        assert fakes.deliveries_to(phone) == []
        await skip_to(env, morning + timedelta(minutes=5))
        view = await h.wait_for(customer, lambda v: v.messages.get(welcome) is DeliveryState.SENT, view_type=CustomerView)
    [line] = [line for line in view.timeline if line.endswith("welcome by sms: sent")]
    noted = datetime.strptime(line[:20], "%Y-%m-%d %H:%M UTC").replace(tzinfo=timezone.utc)  # to the minute
    assert morning.replace(second=0, microsecond=0) <= noted <= morning + timedelta(minutes=1), line
    assert len(fakes.deliveries_to(phone)) == 1


@pytest.mark.parametrize("past_midnight", [False, True], ids=["on its day", "after midnight"])
async def test_the_delivery_day_sms_goes_in_the_night_on_its_day_only(
    own_clock, make_harness, fakes: FakeProviders, past_midnight: bool  # noqa: F811
):
    """Out for delivery at 22:30: the delivery-day SMS goes at once. Out for
    delivery at 23:30 while Twilio is down until 00:30: the next day has
    begun, so it waits for 08:00."""
    env = own_clock
    async with make_harness(env, quiet_hours=True) as h:
        day = local_day(await h.now()) + timedelta(days=1)
        await skip_to(env, at_local(day, 20))
        order = new_order()
        phone = order["customer"]["phone"]
        handle = await h.start(order)
        await handle.signal("payment_received", payment_for(order))
        await handle.signal("order_dispatched", {"carrier": "DHL", "tracking_number": "Q3", "expected_delivery": day.isoformat()})
        await h.wait_touchpoint(handle, "dispatch_notice", "sms")
        if past_midnight:
            await skip_to(env, at_local(day, 23, 30))
            fakes.start_outage("sms")
            try:
                await handle.signal("out_for_delivery", {"date": day.isoformat()})
                await h.wait_for(handle, lambda v: v.status == "out_for_delivery")
                await skip_to(env, at_local(day + timedelta(days=1), 0, 30))
            finally:
                fakes.end_outage("sms")
            due = at_local(day + timedelta(days=1), 8)
        else:
            due = at_local(day, 22, 30)
            await skip_to(env, due)
            await handle.signal("out_for_delivery", {"date": day.isoformat()})
        await sms_sent_when_due(h, handle, "delivery_day", due)
    assert len(fakes.deliveries_to(phone)) == 2
