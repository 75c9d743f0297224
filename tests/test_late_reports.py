"""A provider reports a bounce or an undelivered SMS minutes, sometimes days,
after it took the message. The message that ends an order (its cancellation,
the lost-parcel notice) is the one most likely to be reported after the
journey is over: the order stays open for such reports for a while, and a
report that comes later still is put in front of an operator."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx

from starter.operator import attention_report
from tests.conftest import new_order
from tests.test_settlement import MailAcceptedThenWorkerDied, providers
from tests.test_provider_events import (  # noqa: F401 (fixtures)
    FinishedOrders,
    config,
    journey_web,
    messaging,
    post_events,
    sendgrid_event,
    sent_mail,
    touchpoints,
)
from web.app import create_app
from workflows.ledger_key import LedgerKey
from workflows.models import OrderStatus


class NoFlaggedOrders:
    """The visibility list, empty."""

    async def list_workflows(self, query: str, limit: int) -> Any:
        for _ in ():
            yield


async def test_a_cancellation_mail_that_bounces_after_the_order_was_cancelled_goes_by_sms(ts_env, make_harness, journey_web, fakes):
    order = new_order()
    async with make_harness(ts_env) as h, journey_web(ts_env) as web:
        handle = await h.start(order)
        await h.wait_touchpoint(handle, "order_confirmation")
        await handle.signal("order_cancelled", {"reason": "customer changed their mind"})
        await h.wait_touchpoint(handle, "order_cancelled")
        await ts_env.sleep(timedelta(hours=2))  # the receiving server refused it for a while, then for good
        key = str(LedgerKey.of_order(order["order_id"], "order_cancelled", "email"))
        assert (await post_events(web, [sendgrid_event("bounce", key, type="bounce")])).status_code == 200
        view = await h.wait_touchpoint(handle, "order_cancelled", "sms")
        final = await h.result(handle)
        await h.keep_history(handle, "cancelled_then_bounced")
    assert touchpoints(final, "order_cancelled") == [("email", "sent"), ("email", "undelivered"), ("sms", "sent")]
    assert final.status is OrderStatus.CANCELLED and "message_undelivered:order_cancelled:email" in final.attention_reasons
    assert view.status is OrderStatus.CANCELLED
    assert any("cancel" in text.lower() for text in fakes.deliveries_to(order["customer"]["phone"]))


async def test_a_cancellation_left_in_doubt_is_settled_by_sendgrids_report_after_the_order_was_cancelled(
    ts_env, make_harness, journey_web, fakes, provider_config
):
    """Without Email Activity every mail the worker died on is left in doubt
    for good; the cancellation is the order's last message, and its report
    still finds the order open, which records it sent and lifts the flag."""
    order = new_order()
    fakes.refuse_email_activity(403)
    try:
        email = MailAcceptedThenWorkerDied(provider_config)
        async with make_harness(ts_env, providers=providers(provider_config, email)) as h, journey_web(ts_env) as web:
            handle = await h.start(order)
            await h.wait_for(handle, lambda v: "message_in_doubt:order_confirmation:email" in v.attention_reasons)
            await handle.signal("order_cancelled", {"reason": "customer changed their mind"})
            await h.wait_for(handle, lambda v: "message_in_doubt:order_cancelled:email" in v.attention_reasons)
            await ts_env.sleep(timedelta(hours=1))
            key = str(LedgerKey.of_order(order["order_id"], "order_cancelled", "email"))
            [taken] = [m for m in fakes.accepted if m.key == key]
            report = sendgrid_event("processed", key, sg_message_id=f"{taken.provider_id}.filter0001.1.2.0")
            assert (await post_events(web, [report])).status_code == 200
            final = await h.result(handle)
    finally:
        fakes.refuse_email_activity(None)
    assert touchpoints(final, "order_cancelled") == [("email", "in_doubt"), ("email", "in_doubt"), ("email", "sent")]
    assert final.attention_reasons == ["message_in_doubt:order_confirmation:email"]


async def test_an_order_stays_open_for_reports_only_as_long_as_the_window(ts_env, make_harness):
    order = new_order()
    async with make_harness(ts_env) as h:
        handle = await h.start(order)
        await h.wait_touchpoint(handle, "order_confirmation")
        await handle.signal("order_cancelled", {"reason": "customer changed their mind"})
        view = await h.wait_touchpoint(handle, "order_cancelled")
        sent_at = next(t.at for t in view.touchpoints if t.kind.value == "order_cancelled")
        await h.result(handle)
        description = await handle.describe()
    window = description.close_time - sent_at
    assert timedelta(days=3) <= window < timedelta(days=3, minutes=1), window


async def test_a_report_about_an_order_already_over_is_listed_for_an_operator(config, pool, messaging):
    order, key = await sent_mail(pool, messaging)
    app = create_app(config, pool=pool, temporal_client=FinishedOrders())  # type: ignore[arg-type]

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=config.public_url) as web:
        bounce = sendgrid_event("bounce", key, type="bounce", reason="550 5.1.1 user unknown")
        assert (await post_events(web, [bounce])).status_code == 200
    report = await attention_report(NoFlaggedOrders(), pool)  # type: ignore[arg-type]
    [line] = [line for line in report.splitlines() if key in line]
    assert {order["order_id"], "order_confirmation", "email", "bounced"} <= set(line.split()), line
    assert order["customer"]["email"] not in report
