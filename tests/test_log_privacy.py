"""No log line carries customer data or a secret, whatever the log level."""

from __future__ import annotations

import base64
import dataclasses
import logging
import uuid
from datetime import timedelta
from urllib.parse import quote

from tests.conftest import new_order, payment_for
from tests.fake_providers import BOUNCING_EMAIL_DOMAIN, FakeProviders
from workflows.models import JourneySettings


def address(line1: str, city: str) -> dict:
    """Unlike the default address, found nowhere else (a timezone names Warsaw)."""
    return {"method": "address", "address": {"line1": line1, "city": city, "postal_code": "81-701", "country": "PL"}}


def everything_at_debug(caplog) -> None:
    """Root and every logger known so far at DEBUG, overriding any level a
    library or the worker set; loggers made later inherit the root's."""
    caplog.set_level(logging.DEBUG)
    for name in list(logging.root.manager.loggerDict):
        caplog.set_level(logging.DEBUG, logger=name)


def logged_text(record: logging.LogRecord) -> str:
    """The record as a handler writes it, exception included."""
    return logging.Formatter("%(message)s").format(record)


def customer_data(order: dict) -> list[str]:
    c = order["customer"]
    values = [c["email"], quote(c["email"]), c["name"]]
    if c.get("phone"):
        values += [c["phone"], quote(c["phone"]), c["phone"].lstrip("+")]
    if order["delivery"]["method"] == "address":
        values += [order["delivery"]["address"]["line1"], order["delivery"]["address"]["city"]]
    return values


def message_lines(fakes: FakeProviders, order: dict) -> list[str]:
    """Subject and every line of every message the customer got."""
    texts = [m.text for m in fakes.accepted if m.recipient in (order["customer"]["email"], order["customer"].get("phone"))]
    return [line for text in texts for line in text.splitlines() if len(line.strip()) >= 12]


async def test_item14_a_whole_journey_logs_no_customer_data(ts_env, make_harness, fakes: FakeProviders, provider_config, caplog):
    uid = uuid.uuid4().hex[:8]
    order = new_order(delivery=address(f"Kwiatowa {uid}", f"Sopot{uid}"))
    order["customer"]["name"] = f"Grace Hopper {uid}"
    # A refused mail, then its SMS refused in the RFC 9457 format, which echoes the number.
    refused = new_order(delivery=address(f"Morska {uid}", f"Gdynia{uid}"))
    refused["customer"]["email"] = f"{refused['order_id']}@{BOUNCING_EMAIL_DOMAIN}"
    refused["customer"]["name"] = f"Alan Turing {uid}"
    fakes.answer_in_problem_format(refused["customer"]["phone"])
    fakes.fail_next(refused["customer"]["phone"], 400)
    # The dispatch SMS is answered late, so it is looked up at Twilio (To= in the URL).
    fakes.hang_next(order["customer"]["phone"], 2.0)
    config = dataclasses.replace(
        provider_config, sendgrid_api_key=f"SG.key-{uid}", twilio_auth_token=f"token{uid}", request_timeout=1
    )
    everything_at_debug(caplog)

    # Short delays: the journey runs to its end in real time, without time skipping.
    journey = JourneySettings(feedback_delay=timedelta(seconds=1), recommendations_delay=timedelta(seconds=2))
    async with make_harness(ts_env, config=config, journey=journey) as h:
        handle = await h.start(order)
        await h.wait_touchpoint(handle, "order_confirmation")
        await handle.signal("payment_received", payment_for(order))
        await h.wait_touchpoint(handle, "payment_confirmation")
        await handle.signal("order_dispatched", {"carrier": "DHL", "tracking_number": f"TRK{uid}", "expected_delivery": await h.tomorrow()})
        await h.wait_touchpoint(handle, "dispatch_notice", "sms")
        await handle.signal("out_for_delivery", {"date": await h.tomorrow()})
        await h.wait_touchpoint(handle, "delivery_day", "sms")
        await handle.signal("order_delivered", {"delivered_at": await h.now_iso()})
        await h.wait_touchpoint(handle, "delivery_confirmation")
        await h.wait_touchpoint(handle, "feedback_request")
        await handle.signal("feedback_submitted", {"item_rating": 5, "seller_rating": 4, "comment": f"lovely {uid}"})
        await h.result(handle)
        other = await h.start(refused)
        await h.wait_touchpoint(other, "order_confirmation", "sms")
        await other.terminate("test done")

    assert any(r.method == "GET" for r in fakes.requests if r.params.get("To") == order["customer"]["phone"])
    secrets = [
        config.sendgrid_api_key,
        config.twilio_auth_token,
        base64.b64encode(f"{config.twilio_account_sid}:{config.twilio_auth_token}".encode()).decode(),
    ]
    forbidden = [f"lovely {uid}"] + customer_data(order) + customer_data(refused) + message_lines(fakes, order) + message_lines(fakes, refused) + secrets
    assert len(caplog.records) > 0
    leaks = {
        (record.name, value)
        for record in caplog.records
        for value in forbidden
        if value in logged_text(record)
    }
    assert leaks == set()
