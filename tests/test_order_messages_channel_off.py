"""A customer who turned a channel off for order messages (transactional
consent false, store/consent.py `refusal`) gets the order's messages by
the other channel: each refused one recorded `not_permitted` with the reason,
not flagged, and nothing at all reaches the channel turned off."""

from __future__ import annotations

from typing import Any

from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from store.consent import set_consent
from tests.conftest import Harness, new_order, payment_for, store
from tests.fake_providers import FakeProviders
from tests.test_journey import kinds
from workflows.models import Channel, MessageClass, OrderStatusView


async def journey_with_channel_off(env: WorkflowEnvironment, make_harness, pool, channel: Channel) -> tuple[dict[str, Any], OrderStatusView]:
    """An order, through its delivery, whose customer turned `channel` off
    for order messages (and agreed to no marketing, so nothing but order
    messages goes); its status once nothing is left to send."""
    order = new_order()
    order["customer"]["marketing_consent"] = {"email": False, "sms": False}
    await store(pool, order)
    async with pool.acquire() as conn:
        await set_consent(
            conn, order["customer"]["customer_id"], MessageClass.TRANSACTIONAL, channel, False, source="operator"
        )
    async with make_harness(env) as h:
        handle = await h.start(order)
        await through_delivery(h, handle, order)
        view = await h.wait_for(handle, lambda v: not v.queued_messages)
        await handle.terminate("test done")
    return order, view


def by_channel(view: OrderStatusView) -> dict[str, list[tuple[str, str]]]:
    """Each channel's touchpoints in order (the two channels go in parallel)."""
    return {c: [(k, state) for k, ch, state in kinds(view) if ch == c] for c in ("email", "sms")}


async def through_delivery(h: Harness, handle: WorkflowHandle, order: dict[str, Any]) -> None:
    """Each event once the messages of the one before are settled: this is
    about channels, not about a message overtaken."""
    settled = lambda kind: lambda v: not v.queued_messages and any(t.kind.value == kind for t in v.touchpoints)  # noqa: E731
    await h.wait_for(handle, settled("order_confirmation"))
    for event, payload, kind in [
        ("payment_received", payment_for(order), "payment_confirmation"),
        ("order_dispatched", {"carrier": "DHL", "tracking_number": "OFF1", "expected_delivery": await h.tomorrow()}, "dispatch_notice"),
        ("out_for_delivery", {"date": await h.tomorrow()}, "delivery_day"),
        ("order_delivered", {"delivered_at": await h.now_iso()}, "delivery_confirmation"),
    ]:
        await handle.signal(event, payload)
        await h.wait_for(handle, settled(kind))


async def test_email_turned_off_for_order_messages_sends_them_by_sms(
    ts_env: WorkflowEnvironment, make_harness, fakes: FakeProviders, pool
):
    order, view = await journey_with_channel_off(ts_env, make_harness, pool, Channel.EMAIL)
    refused = "customer prefers no email for order messages"
    assert by_channel(view) == {
        "email": [
            ("order_confirmation", "not_permitted"),
            ("payment_confirmation", "not_permitted"),
            ("dispatch_notice", "not_permitted"),
            ("delivery_confirmation", "not_permitted"),
        ],
        # The dispatch notice once: the SMS carries it already.
        "sms": [
            ("order_confirmation", "sent"),
            ("payment_confirmation", "sent"),
            ("dispatch_notice", "sent"),
            ("delivery_day", "sent"),
            ("delivery_confirmation", "sent"),
        ],
    }
    assert {t.error for t in view.touchpoints if t.channel is Channel.EMAIL} == {refused}
    assert not view.needs_attention, view.attention_reasons
    assert fakes.deliveries_to(order["customer"]["email"]) == []
    texts = fakes.deliveries_to(order["customer"]["phone"])
    assert len(texts) == 5 and sum("OFF1" in t for t in texts) == 2, texts  # the dispatch notice once, not twice


async def test_sms_turned_off_for_order_messages_sends_them_by_email(
    ts_env: WorkflowEnvironment, make_harness, fakes: FakeProviders, pool
):
    order, view = await journey_with_channel_off(ts_env, make_harness, pool, Channel.SMS)
    assert by_channel(view) == {
        "email": [
            ("order_confirmation", "sent"),
            ("payment_confirmation", "sent"),
            ("dispatch_notice", "sent"),
            ("delivery_day", "sent"),
            ("delivery_confirmation", "sent"),
        ],
        # The email carries the dispatch notice already: nothing to hand over.
        "sms": [("dispatch_notice", "not_permitted"), ("delivery_day", "not_permitted")],
    }
    assert {t.error for t in view.touchpoints if t.channel is Channel.SMS} == {"customer prefers no sms for order messages"}
    assert not view.needs_attention, view.attention_reasons
    assert fakes.deliveries_to(order["customer"]["phone"]) == []
    assert any("out for delivery today" in m for m in fakes.deliveries_to(order["customer"]["email"]))
