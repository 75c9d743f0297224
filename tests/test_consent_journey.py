"""Consent read when a message is sent, and SMS quiet hours, in whole order
journeys on the time-skipping server."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from store.consent import set_consent
from tests.conftest import new_order, payment_for
from tests.test_customer_journey import own_clock  # noqa: F401 (fixture)
from workflows.clock import zone
from workflows.models import Channel, JourneySettings, MessageClass

QUICK = JourneySettings(feedback_delay=timedelta(hours=1), recommendations_delay=timedelta(hours=2))


def states(view, kind: str) -> dict[str, str]:
    return {t.channel.value: t.state.value for t in view.touchpoints if t.kind.value == kind}


async def deliver(h, handle, order) -> None:
    """Paid, dispatched, delivered, each event once the messages of the one
    before are sent: none may overtake a send (see Harness.wait_queues_empty)."""
    await handle.signal("payment_received", payment_for(order))
    await h.wait_touchpoint(handle, "payment_confirmation")
    await handle.signal(
        "order_dispatched", {"carrier": "DHL", "tracking_number": "T1", "expected_delivery": await h.tomorrow()}
    )
    await h.wait_touchpoint(handle, "dispatch_notice", "sms")
    await h.wait_queues_empty(handle)
    await handle.signal("order_delivered", {"delivered_at": await h.now_iso()})


async def test_consent_withdrawn_after_the_order_started_stops_its_marketing(own_clock, make_harness, pool):  # noqa: F811
    async with make_harness(own_clock, journey=QUICK) as h:
        order = new_order()  # consents to marketing email at checkout
        handle = await h.start(order)
        await deliver(h, handle, order)
        await h.wait_touchpoint(handle, "delivery_confirmation")
        async with pool.acquire() as conn:
            await set_consent(
                conn, order["customer"]["customer_id"], MessageClass.MARKETING, Channel.EMAIL, False, source="operator"
            )
        result = await h.result(handle)
        # Not by email any more, and not by SMS either: no consent there.
        assert states(result, "recommendations") == {"email": "not_permitted", "sms": "not_permitted"}
        # Order messages still go.
        assert states(result, "feedback_request") == {"email": "sent"}
        audit = await pool.fetchval(
            "SELECT count(*) FROM consent_audit WHERE customer_id = $1", order["customer"]["customer_id"]
        )
        assert audit == 2  # granted at checkout, withdrawn by the operator


def zone_where_it_is(hour: int, now: datetime) -> str:
    """An Etc/GMT zone whose local time is `hour` o'clock now."""
    offset = (hour - now.astimezone(timezone.utc).hour) % 24
    offset = offset - 24 if offset > 12 else offset
    return f"Etc/GMT{-offset:+d}" if offset else "Etc/GMT"


async def test_an_sms_due_in_the_customers_night_waits_for_their_morning(own_clock, make_harness):  # noqa: F811
    async with make_harness(own_clock, journey=QUICK, quiet_hours=True) as h:
        now = await h.now()
        tz = zone_where_it_is(23, now)
        order = new_order()
        order["customer"]["timezone"] = tz
        handle = await h.start(order)
        await handle.signal("payment_received", payment_for(order))
        await h.wait_touchpoint(handle, "payment_confirmation")
        await handle.signal(
            "order_dispatched", {"carrier": "DHL", "tracking_number": "T1", "expected_delivery": await h.tomorrow()}
        )
        view = await h.wait_touchpoint(handle, "dispatch_notice", "email")
        assert "dispatch_notice:sms" in view.queued_messages
        await own_clock.sleep(timedelta(hours=10))
        view = await h.wait_touchpoint(handle, "dispatch_notice", "sms")
        sms = next(t for t in view.touchpoints if t.kind.value == "dispatch_notice" and t.channel is Channel.SMS)
        local = sms.at.astimezone(zone(tz))
        assert sms.state.value == "sent"
        assert (local.hour, local.minute) == (8, 0), local
