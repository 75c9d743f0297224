"""What providers report after they took a message: SendGrid's signed Event
Webhook and Twilio's status callbacks, through the HTTP service to the
ledger, the suppression list and the order's workflow.

Ledger rows come from real sends (send_message against the fakes); the
events are signed the way SendGrid and Twilio sign them, with a key pair made
here and the auth token the fakes use."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import math
import os
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import asyncpg
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from temporalio.runtime import Runtime
from temporalio.service import RPCError, RPCStatusCode
from twilio.request_validator import RequestValidator

from activities.config import ProviderConfig
from bench.prometheus import free_port, parse, scrape, total
from activities.messaging import MessagingActivities
from tests.conftest import TEST_KEY_ENV, new_order, payment_for
from tests.fake_providers import FakeProviders
from tests.fake_reports import SIGNATURE, TIMESTAMP, new_key_pair
from tests.fake_reports import sendgrid_headers as signed_as_sendgrid
from tests.test_consent_sending import customer, journey_message, order_message, send
from tests.test_exactly_once import wait_until, wait_until_async
from tests.test_web import FakeTemporal, client, service_config, temporal  # noqa: F401 (fixtures)
from web.app import create_app
from web.config import ConfigError, WebConfig
from web.sms_statuses import LookupTiming
from worker import prometheus_runtime
from workflows.ledger_key import LedgerKey
from workflows.models import Channel, DeliveryState, Touchpoint, case_workflow_id

REPO = Path(__file__).resolve().parent.parent
SENDGRID_EVENTS = "/webhooks/sendgrid/events"
TWILIO_STATUS = "/webhooks/twilio/status"


SIGNING_KEY, PUBLIC_KEY = new_key_pair()
OTHER_KEY, _ = new_key_pair()


def sendgrid_headers(body: bytes, *, at: float | None = None, key: ec.EllipticCurvePrivateKey = SIGNING_KEY) -> dict[str, str]:
    return signed_as_sendgrid(body, key, at)


def sendgrid_event(event: str, key: str | None, **fields: Any) -> dict[str, Any]:
    """One event as SendGrid posts it; the mail's custom args are top-level keys."""
    body: dict[str, Any] = {
        "email": "someone@example.com",
        "timestamp": int(time.time()),
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        "event": event,
        "sg_event_id": base64.b64encode(uuid.uuid4().bytes).decode(),
        "sg_message_id": f"{uuid.uuid4().hex[:22]}.filter0001.16648.5515E0B88.0",
        **fields,
    }
    if key is not None:
        body["message_key"] = key
    return body


async def post_events(client: httpx.AsyncClient, events: list[dict[str, Any]], **sign: Any) -> httpx.Response:
    body = json.dumps(events).encode()
    return await client.post(SENDGRID_EVENTS, content=body, headers=sendgrid_headers(body, **sign))


def twilio_callback(status_callback: str, sid: str, status: str, error_code: int | None = None) -> tuple[str, dict[str, str]]:
    """The path and form of Twilio's status callback to `status_callback`."""
    params = {
        "MessageSid": sid,
        "SmsSid": sid,
        "AccountSid": "AC" + "0" * 32,
        "From": "+15005550006",
        "To": "+48600000000",
        "MessageStatus": status,
        "SmsStatus": status,
        "ApiVersion": "2010-04-01",
    }
    if error_code is not None:
        params["ErrorCode"] = str(error_code)
    parts = urlsplit(status_callback)
    return f"{parts.path}?{parts.query}", params


async def post_callback(
    client: httpx.AsyncClient, status_callback: str, sid: str, status: str, error_code: int | None = None, *, token: str
) -> httpx.Response:
    path, params = twilio_callback(status_callback, sid, status, error_code)
    signature = RequestValidator(token).compute_signature(status_callback, params)
    return await client.post(path, data=params, headers={"X-Twilio-Signature": signature})


@pytest.fixture
def config(database_url: str, provider_config) -> WebConfig:
    # The public URL the worker writes into StatusCallback.
    return service_config(
        database_url,
        unsubscribe_secret="s",
        public_url=provider_config.web_public_url,
        twilio_auth_token=provider_config.twilio_auth_token,
        sendgrid_webhook_public_key=PUBLIC_KEY,
    )


@pytest.fixture
def messaging(pool: asyncpg.Pool, provider_config) -> MessagingActivities:
    return MessagingActivities(pool, provider_config)


async def sent_mail(pool, messaging, kind: Touchpoint = Touchpoint.ORDER_CONFIRMATION) -> tuple[dict[str, Any], str]:
    """An order and the ledger key of its mail, sent."""
    order = await customer(pool)
    request = order_message(order, kind)
    assert (await send(messaging, request)).state is DeliveryState.SENT
    return order, request.key


async def sent_sms(pool, messaging, fakes: FakeProviders, kind: Touchpoint = Touchpoint.DELIVERY_DAY):
    """An order, the ledger key of its SMS, sent, and the message as Twilio took it."""
    order = await customer(pool)
    request = order_message(order, kind, Channel.SMS, carrier="DHL", tracking_number="T1")
    outcome = await send(messaging, request)
    assert outcome.state is DeliveryState.SENT
    accepted = next(m for m in fakes.accepted if m.provider_id == outcome.provider_message_id)
    return order, request.key, accepted


async def ledger(pool: asyncpg.Pool, key: str) -> dict[str, Any]:
    row = await pool.fetchrow(
        "SELECT state, delivery, provider_message_id, claim_token FROM message_ledger WHERE key = $1", key
    )
    return dict(row)


async def suppressed(pool: asyncpg.Pool, channel: str, recipient: str) -> dict[str, Any] | None:
    row = await pool.fetchrow("SELECT reason, source FROM suppressions WHERE channel = $1 AND recipient = $2", channel, recipient)
    return dict(row) if row else None


async def events_of(pool: asyncpg.Pool, key: str) -> list[tuple[str, str]]:
    rows = await pool.fetch("SELECT provider, event FROM provider_events WHERE ledger_key = $1 ORDER BY received_at", key)
    return [tuple(r) for r in rows]


# --- SendGrid: who may post ---------------------------------------------------------


async def test_signed_sendgrid_events_are_recorded(client, pool, messaging):
    order, key = await sent_mail(pool, messaging)
    response = await post_events(client, [sendgrid_event("processed", key), sendgrid_event("delivered", key)])
    assert response.status_code == 200
    assert response.json() == {"received": 2, "duplicates": 0, "unreadable": 0}
    assert await events_of(pool, key) == [("sendgrid", "processed"), ("sendgrid", "delivered")]
    assert (await ledger(pool, key))["delivery"] == "delivered"


async def test_unsigned_or_forged_sendgrid_posts_are_403_and_change_nothing(client, pool, messaging):
    order, key = await sent_mail(pool, messaging)
    events = [sendgrid_event("bounce", key, type="bounce", reason="550 user unknown")]
    body = json.dumps(events).encode()
    signed = sendgrid_headers(body)
    attempts = {
        "unsigned": {"Content-Type": "application/json"},
        "no timestamp": {k: v for k, v in signed.items() if k != TIMESTAMP},
        "another key": sendgrid_headers(body, key=OTHER_KEY),
        "signature not base64": {**signed, SIGNATURE: "%%%"},
        "other timestamp than signed": {**signed, TIMESTAMP: str(int(signed[TIMESTAMP]) + 1)},
    }
    for name, headers in attempts.items():
        response = await client.post(SENDGRID_EVENTS, content=body, headers=headers)
        assert response.status_code == 403, name
    # Signed, then changed on the way.
    tampered = json.dumps([{**events[0], "message_key": key + "x"}]).encode()
    assert (await client.post(SENDGRID_EVENTS, content=tampered, headers=signed)).status_code == 403
    assert await events_of(pool, key) == []
    assert (await ledger(pool, key))["delivery"] is None
    assert await suppressed(pool, "email", order["customer"]["email"]) is None


@pytest.mark.parametrize("skew", [-timedelta(minutes=6), timedelta(minutes=6)], ids=["replayed", "from the future"])
async def test_a_sendgrid_post_signed_too_long_ago_or_ahead_is_403(client, pool, messaging, skew: timedelta):
    order, key = await sent_mail(pool, messaging)
    response = await post_events(client, [sendgrid_event("delivered", key)], at=time.time() + skew.total_seconds())
    assert response.status_code == 403
    assert "timestamp" in response.text.lower()
    assert await events_of(pool, key) == []


async def test_the_tolerance_comes_from_the_configuration(config, pool, messaging):
    order, key = await sent_mail(pool, messaging)
    app = create_app(replace(config, sendgrid_webhook_tolerance=timedelta(minutes=10)), pool=pool, temporal_client=FakeTemporal())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=config.public_url) as client:
        response = await post_events(client, [sendgrid_event("delivered", key)], at=time.time() - 6 * 60)
    assert response.status_code == 200


async def test_a_duplicate_sendgrid_event_is_accepted_and_has_no_second_effect(client, pool, messaging, temporal):
    order, key = await sent_mail(pool, messaging)
    bounce = sendgrid_event("bounce", key, type="bounce", reason="550 5.1.1 user unknown")
    first = await post_events(client, [bounce])
    again = await post_events(client, [bounce, sendgrid_event("deferred", key)])
    assert first.status_code == again.status_code == 200
    assert again.json() == {"received": 2, "duplicates": 1, "unreadable": 0}
    assert await events_of(pool, key) == [("sendgrid", "bounce"), ("sendgrid", "deferred")]
    assert len(temporal.sent) == 1


@pytest.fixture(scope="module")
def web_metrics() -> tuple[Runtime, int]:
    """A runtime serving the HTTP service's metrics, and its port."""
    port = free_port()
    return prometheus_runtime(f"127.0.0.1:{port}", "WEB_METRICS_PORT"), port


async def counted(port: int, name: str, **labels: str) -> float:
    return total(parse(await scrape(port)), name, **labels)


@pytest.mark.parametrize(
    "odd, wrong",
    [
        ({"event": "delivered", "timestamp": 1, "message_key": "k"}, "sg_event_id: missing"),
        ({"sg_event_id": "e-{uid}", "event": "bounce", "timestamp": "noon"}, "timestamp: int_parsing"),
        ({"sg_event_id": "e-{uid}", "timestamp": 1}, "event: missing"),
        ("bounce", "not an object"),
    ],
    ids=["no event id", "bad timestamp", "no event", "not an object"],
)
async def test_a_batch_with_an_odd_event_takes_the_others_and_keeps_the_odd_one_as_unreadable(
    config, pool, messaging, web_metrics, odd, wrong: str
):
    """SendGrid posts a batch again, whole, until it is answered 2xx, for 24
    hours: refusing it for one event it cannot change would lose the others."""
    runtime, port = web_metrics
    order, key = await sent_mail(pool, messaging)
    email = order["customer"]["email"]
    if isinstance(odd, dict):
        odd = {k: v.format(uid=uuid.uuid4().hex) if isinstance(v, str) else v for k, v in odd.items()}
        odd.update(email=email, reason=f"550 <{email}> unknown")
    else:
        odd = f"{odd} {uuid.uuid4().hex}"
    bounce = sendgrid_event("bounce", key, type="bounce", reason="550 user unknown")
    before = await counted(port, "orders_web_unreadable_events_total", provider="sendgrid")
    app = create_app(config, pool=pool, temporal_client=FakeTemporal(), runtime=runtime)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=config.public_url) as client:
        response = await post_events(client, [odd, bounce])
        again = await post_events(client, [odd, bounce])
    assert response.status_code == again.status_code == 200
    assert response.json() == {"received": 2, "duplicates": 0, "unreadable": 1}
    assert again.json() == {"received": 2, "duplicates": 2, "unreadable": 1}
    # The valid event did all it does.
    assert (await ledger(pool, key))["delivery"] == "bounced"
    # The odd one is kept once, by its own id or a hash of it, saying what was wrong and nothing it carried.
    event_id = odd.get("sg_event_id") if isinstance(odd, dict) else None
    expected_id = event_id or hashlib.sha256(json.dumps(odd, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    [row] = await pool.fetch(
        "SELECT event_id, event, ledger_key, provider_message_id, detail FROM provider_events"
        " WHERE provider = 'sendgrid' AND event = 'unreadable' AND event_id = $1",
        expected_id,
    )
    assert wrong in row["detail"]
    assert (row["ledger_key"], row["provider_message_id"]) == (None, None)
    assert email not in row["detail"] and "unknown" not in row["detail"]
    # Counted once, though posted twice.
    await wait_until_async(lambda: counted(port, "orders_web_unreadable_events_total", provider="sendgrid"), lambda n: n > before)
    assert await counted(port, "orders_web_unreadable_events_total", provider="sendgrid") == before + 1


async def test_a_sendgrid_post_that_is_not_a_list_of_events_is_422(client):
    response = await post_events(client, {"event": "delivered"})  # type: ignore[arg-type]
    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["detail"]] == [["body"]]


async def test_a_sendgrid_post_that_is_not_json_is_422(client):
    body = b"[{not json"
    response = await client.post(SENDGRID_EVENTS, content=body, headers=sendgrid_headers(body))
    assert response.status_code == 422


async def test_sendgrid_batches_may_be_larger_than_other_bodies_but_not_without_limit(client, pool, config):
    # SendGrid batches events into posts far larger than a form.
    many = [sendgrid_event("open", None, useragent="x" * 400) for _ in range(config.max_body_bytes // 400 + 10)]
    assert len(json.dumps(many)) > config.max_body_bytes
    assert (await post_events(client, many)).status_code == 200
    too_many = many * (config.sendgrid_webhook_max_body_bytes // len(json.dumps(many)) + 1)
    assert (await post_events(client, too_many)).status_code == 413


async def test_without_a_public_key_the_sendgrid_webhook_is_503_not_open(config, pool):
    app = create_app(replace(config, sendgrid_webhook_public_key=None), pool=pool)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=config.public_url) as client:
        response = await post_events(client, [sendgrid_event("delivered", None)])
    assert response.status_code == 503 and "SENDGRID_WEBHOOK_PUBLIC_KEY" in response.text


def test_sendgrid_webhook_configuration_from_the_environment():
    base = {"UNSUBSCRIBE_SECRET": "s", **TEST_KEY_ENV}
    config = WebConfig.from_env({**base, "SENDGRID_WEBHOOK_PUBLIC_KEY": PUBLIC_KEY, "SENDGRID_WEBHOOK_TOLERANCE": "2m"})
    assert config.sendgrid_webhook_public_key == PUBLIC_KEY
    assert config.sendgrid_webhook_tolerance == timedelta(minutes=2)
    assert config.sendgrid_webhook_max_body_bytes == 1024 * 1024
    defaults = WebConfig.from_env(base)
    assert defaults.sendgrid_webhook_public_key is None and defaults.sendgrid_webhook_tolerance == timedelta(minutes=5)
    with pytest.raises(ConfigError, match="SENDGRID_WEBHOOK_TOLERANCE"):
        WebConfig.from_env({**base, "SENDGRID_WEBHOOK_TOLERANCE": "soon"})
    with pytest.raises(ConfigError, match="SENDGRID_WEBHOOK_PUBLIC_KEY"):
        create_app(replace(config, sendgrid_webhook_public_key="not a key", database_url="postgresql://x"))


# --- SendGrid: what each event does ---------------------------------------------------


@pytest.mark.parametrize("event", ["processed", "delivered"])
@pytest.mark.parametrize("left", ["in_doubt", "sending"])
async def test_processed_or_delivered_settles_a_row_left_in_doubt_or_sending_as_sent(client, pool, messaging, event, left):
    """The contract with in-doubt settlement: SendGrid had the mail."""
    order, key = await sent_mail(pool, messaging)
    await pool.execute(
        "UPDATE message_ledger SET state = $2, provider_message_id = NULL, claim_token = $3, lease_until = now() WHERE key = $1",
        key, left, uuid.uuid4(),
    )
    sg_message_id = "x-message-id-1.filter0001.16648.5515E0B88.0"
    assert (await post_events(client, [sendgrid_event(event, key, sg_message_id=sg_message_id)])).status_code == 200
    row = await ledger(pool, key)
    assert (row["state"], row["provider_message_id"], row["claim_token"]) == ("sent", "x-message-id-1", None)
    assert row["delivery"] == ("delivered" if event == "delivered" else None)


async def test_a_hard_bounce_marks_the_row_suppresses_the_address_and_tells_the_order(client, pool, messaging, temporal):
    order, key = await sent_mail(pool, messaging)
    email = order["customer"]["email"]
    reason = f"550 5.1.1 <{email}>: Recipient address rejected: User unknown"
    response = await post_events(client, [sendgrid_event("bounce", key, type="bounce", reason=reason, status="5.1.1")])
    assert response.status_code == 200
    assert (await ledger(pool, key))["delivery"] == "bounced"
    assert await suppressed(pool, "email", email) == {"reason": "SendGrid bounce", "source": "provider"}
    [(workflow_id, signal, payload)] = temporal.sent
    assert (workflow_id, signal) == (f"order-{order['order_id']}", "message_undelivered")
    assert payload == {
        "kind": "order_confirmation",
        "channel": "email",
        "event": "bounced",
        "reason": "bounce: 550 5.1.1 <<email>>: Recipient address rejected: User unknown",
    }
    # The next mail to that address is not sent.
    second = await send(messaging, order_message(order, Touchpoint.PAYMENT_CONFIRMATION))
    assert second.state is DeliveryState.NOT_PERMITTED


async def test_a_blocked_mail_goes_to_the_other_channel_but_the_address_stays(client, pool, messaging, temporal):
    order, key = await sent_mail(pool, messaging)
    response = await post_events(client, [sendgrid_event("bounce", key, type="blocked", reason="421 try later")])
    assert response.status_code == 200
    assert (await ledger(pool, key))["delivery"] == "bounced"
    assert await suppressed(pool, "email", order["customer"]["email"]) is None
    assert [(name, p["event"]) for _, name, p in temporal.sent] == [("message_undelivered", "bounced")]


@pytest.mark.parametrize(
    "reason, suppresses",
    [("Bounced Address", True), ("Spam Reporting Address", True), ("Unsubscribed Address", True), ("Invalid SMTPAPI header", False)],
)
async def test_a_dropped_mail_goes_to_the_other_channel_and_an_address_sendgrid_refuses_is_suppressed(
    client, pool, messaging, temporal, reason: str, suppresses: bool
):
    order, key = await sent_mail(pool, messaging)
    assert (await post_events(client, [sendgrid_event("dropped", key, reason=reason)])).status_code == 200
    assert (await ledger(pool, key))["delivery"] == "dropped"
    expected = {"reason": f"SendGrid dropped: {reason}", "source": "provider"} if suppresses else None
    assert await suppressed(pool, "email", order["customer"]["email"]) == expected
    assert [p["event"] for _, _, p in temporal.sent] == ["dropped"]


async def test_a_spam_report_suppresses_the_address_and_leaves_the_order_alone(client, pool, messaging, temporal):
    order, key = await sent_mail(pool, messaging)
    await post_events(client, [sendgrid_event("delivered", key)])
    assert (await post_events(client, [sendgrid_event("spamreport", key)])).status_code == 200
    assert (await ledger(pool, key))["delivery"] == "spam_report"
    assert await suppressed(pool, "email", order["customer"]["email"]) == {"reason": "SendGrid spam report", "source": "provider"}
    # A late 'delivered' does not hide the complaint.
    await post_events(client, [sendgrid_event("delivered", key)])
    assert (await ledger(pool, key))["delivery"] == "spam_report"
    assert temporal.sent == []


async def test_events_of_mail_that_is_not_ours_are_recorded_and_change_nothing(client, pool, temporal):
    unknown = str(LedgerKey.of_order(f"nobody-{uuid.uuid4().hex[:6]}", "order_confirmation", "email"))
    events = [sendgrid_event("bounce", None, type="bounce"), sendgrid_event("bounce", unknown, type="bounce")]
    assert (await post_events(client, events)).status_code == 200
    assert await pool.fetchval(
        "SELECT count(*) FROM provider_events WHERE event_id = ANY($1::text[])", [e["sg_event_id"] for e in events]
    ) == 2
    assert await suppressed(pool, "email", "someone@example.com") is None
    assert temporal.sent == []


async def test_a_bounced_customer_journey_mail_is_recorded_and_suppressed_without_a_signal(client, pool, messaging, temporal):
    """The customer's journey learns of it at its next send, which the
    suppression refuses and hands to SMS where consent allows."""
    order = await customer(pool, marketing={"email": True})
    request = journey_message(order, Touchpoint.WIN_BACK)
    assert (await send(messaging, request)).state is DeliveryState.SENT
    assert (await post_events(client, [sendgrid_event("bounce", request.key, type="bounce")])).status_code == 200
    assert (await ledger(pool, request.key))["delivery"] == "bounced"
    assert await suppressed(pool, "email", order["customer"]["email"]) is not None
    assert temporal.sent == []


async def test_a_bounced_case_mail_is_recorded_and_suppressed_without_telling_the_order(client, pool, messaging, temporal):
    """A case's message is about the order but is not the order's: the order
    has no such touchpoint to hand over, so it is not told."""
    order = await customer(pool)
    key = str(LedgerKey.of_case(case_workflow_id(order["order_id"], 1), Touchpoint.CASE_ACKNOWLEDGEMENT))
    request = order_message(order, Touchpoint.CASE_ACKNOWLEDGEMENT).model_copy(update={"key": key})
    assert (await send(messaging, request)).state is DeliveryState.SENT
    assert (await post_events(client, [sendgrid_event("bounce", key, type="bounce")])).status_code == 200
    assert (await ledger(pool, key))["delivery"] == "bounced"
    assert await suppressed(pool, "email", order["customer"]["email"]) is not None
    assert temporal.sent == []


class FinishedOrders(FakeTemporal):
    """Every workflow has finished: a signal is refused with NOT_FOUND."""

    def get_workflow_handle(self, workflow_id: str) -> FinishedOrders.Handle:
        return FinishedOrders.Handle(self, workflow_id)

    class Handle(FakeTemporal.Handle):
        async def signal(self, name: str, arg: Any, **kwargs: Any) -> None:
            raise RPCError("workflow execution already completed", RPCStatusCode.NOT_FOUND, b"")


async def test_an_event_for_a_finished_order_is_recorded_and_answered_200(config, pool, messaging):
    order, key = await sent_mail(pool, messaging)
    app = create_app(config, pool=pool, temporal_client=FinishedOrders())  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=config.public_url) as client:
        bounce = sendgrid_event("bounce", key, type="bounce")
        assert (await post_events(client, [bounce])).status_code == 200
        assert (await post_events(client, [bounce])).json() == {"received": 1, "duplicates": 1, "unreadable": 0}
    assert await events_of(pool, key) == [("sendgrid", "bounce")]
    assert (await ledger(pool, key))["delivery"] == "bounced"


# --- Twilio status callbacks -----------------------------------------------------------


async def test_every_sms_asks_for_status_callbacks_at_the_web_service(pool, messaging, fakes: FakeProviders, provider_config):
    order, key, accepted = await sent_sms(pool, messaging, fakes)
    url = urlsplit(accepted.status_callback)
    assert f"{url.scheme}://{url.netloc}" == provider_config.web_public_url
    assert url.path == TWILIO_STATUS
    assert parse_qs(url.query) == {"key": [key]}


REAL_TWILIO = {"TWILIO_ACCOUNT_SID": "AC" + "1" * 32, "TWILIO_AUTH_TOKEN": "t" * 32, "TWILIO_FROM_NUMBER": "+15005550006"}
REAL_SENDGRID = {"SENDGRID_API_KEY": "SG.x", "UNSUBSCRIBE_SECRET": "s" * 32}


@pytest.mark.parametrize("providers", [REAL_TWILIO, REAL_SENDGRID], ids=["twilio", "sendgrid"])
@pytest.mark.parametrize("public_url", [None, "http://localhost:8000", "http://127.0.0.1:8000", "https://[::1]/", "http://0.0.0.0:8000"])
def test_real_providers_with_a_loopback_public_url_are_refused(providers: dict[str, str], public_url: str | None):
    """Twilio would post every status callback, and customers would open
    every unsubscribe link, at an address only this machine can reach."""
    env = {**providers, **({"WEB_PUBLIC_URL": public_url} if public_url else {})}
    with pytest.raises(ValueError, match="WEB_PUBLIC_URL .* is a local address"):
        ProviderConfig.from_env(env)


@pytest.mark.parametrize(
    "env",
    [
        {**REAL_TWILIO, **REAL_SENDGRID, "WEB_PUBLIC_URL": "https://orders.example.com"},
        # Providers on loopback (the tests' fakes, a local mock): the service is there too.
        {**REAL_TWILIO, "TWILIO_API_BASE_URL": "http://127.0.0.1:9999", "SENDGRID_API_KEY": "SG.x",
         "SENDGRID_API_HOST": "http://localhost:9998", "UNSUBSCRIBE_SECRET": "s"},
        # No marketing email without the secret, so no unsubscribe link.
        {"SENDGRID_API_KEY": "SG.x"},
        {},
    ],
)
def test_a_public_url_or_providers_on_loopback_are_accepted(env: dict[str, str]):
    ProviderConfig.from_env(env)


def test_the_worker_refuses_to_start_with_real_twilio_and_a_loopback_public_url():
    env = {**os.environ, **TEST_KEY_ENV, **REAL_TWILIO, "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", "METRICS_PORT": "0"}
    env.pop("WEB_PUBLIC_URL", None)
    result = subprocess.run([sys.executable, "worker.py"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "error: WEB_PUBLIC_URL http://localhost:8000 is a local address" in result.stderr, result.stderr


async def test_a_signed_status_callback_updates_the_ledger(client, pool, messaging, fakes, config):
    order, key, accepted = await sent_sms(pool, messaging, fakes)
    for status in ("sent", "delivered"):
        response = await post_callback(client, accepted.status_callback, accepted.provider_id, status, token=config.twilio_auth_token)
        assert response.status_code == 200 and response.json() == {"duplicate": False}
    assert (await ledger(pool, key))["delivery"] == "delivered"
    assert await events_of(pool, key) == [("twilio", "sent"), ("twilio", "delivered")]


async def test_unsigned_or_forged_status_callbacks_are_403(client, pool, messaging, fakes, config):
    order, key, accepted = await sent_sms(pool, messaging, fakes)
    path, params = twilio_callback(accepted.status_callback, accepted.provider_id, "undelivered", 30003)
    token = config.twilio_auth_token
    other_key = accepted.status_callback.replace(quote(key, safe=""), quote(key + "x", safe=""))
    attempts = {
        "unsigned": {},
        "other token": RequestValidator("not-the-token").compute_signature(accepted.status_callback, params),
        "signed for another message": RequestValidator(token).compute_signature(other_key, params),
        "other status": RequestValidator(token).compute_signature(accepted.status_callback, {**params, "MessageStatus": "delivered"}),
    }
    for name, signature in attempts.items():
        headers = {"X-Twilio-Signature": signature} if signature else {}
        assert (await client.post(path, data=params, headers=headers)).status_code == 403, name
    assert await events_of(pool, key) == []


async def test_a_repeated_status_callback_is_harmless(client, pool, messaging, fakes, config, temporal):
    order, key, accepted = await sent_sms(pool, messaging, fakes)
    args = (accepted.status_callback, accepted.provider_id, "undelivered", 30003)
    first = await post_callback(client, *args, token=config.twilio_auth_token)
    again = await post_callback(client, *args, token=config.twilio_auth_token)
    assert first.json() == {"duplicate": False} and again.json() == {"duplicate": True}
    assert again.status_code == 200
    assert len(temporal.sent) == 1 and await events_of(pool, key) == [("twilio", "undelivered")]


@pytest.mark.parametrize(
    "status, error_code, suppresses",
    [("undelivered", 30003, False), ("undelivered", 30005, True), ("failed", 30006, True), ("failed", 21610, True)],
)
async def test_an_undelivered_or_failed_sms_goes_to_the_other_channel(
    client, pool, messaging, fakes, config, temporal, status: str, error_code: int, suppresses: bool
):
    order, key, accepted = await sent_sms(pool, messaging, fakes)
    response = await post_callback(client, accepted.status_callback, accepted.provider_id, status, error_code, token=config.twilio_auth_token)
    assert response.status_code == 200
    assert (await ledger(pool, key))["delivery"] == status
    expected = {"reason": f"Twilio {error_code}", "source": "provider"} if suppresses else None
    assert await suppressed(pool, "sms", order["customer"]["phone"]) == expected
    assert temporal.sent == [
        (
            f"order-{order['order_id']}",
            "message_undelivered",
            {"kind": "delivery_day", "channel": "sms", "event": status, "reason": f"{status}: Twilio error {error_code}"},
        )
    ]


async def test_a_status_callback_settles_a_row_left_sending_with_the_message_sid(client, pool, messaging, fakes, config):
    order, key, accepted = await sent_sms(pool, messaging, fakes)
    await pool.execute("UPDATE message_ledger SET state = 'sending', provider_message_id = NULL WHERE key = $1", key)
    await post_callback(client, accepted.status_callback, accepted.provider_id, "sent", token=config.twilio_auth_token)
    row = await ledger(pool, key)
    assert (row["state"], row["provider_message_id"], row["delivery"]) == ("sent", accepted.provider_id, None)


@pytest.mark.parametrize(
    "change, location",
    [
        ({"MessageStatus": None}, ["body", "MessageStatus"]),
        ({"MessageStatus": "lost"}, ["body", "MessageStatus"]),
        ({"MessageSid": "not-a-sid"}, ["body", "MessageSid"]),
        ({"ErrorCode": "x"}, ["body", "ErrorCode"]),
    ],
)
async def test_a_malformed_status_callback_is_422_naming_the_field(client, pool, messaging, fakes, config, change, location):
    order, key, accepted = await sent_sms(pool, messaging, fakes)
    path, params = twilio_callback(accepted.status_callback, accepted.provider_id, "delivered")
    params = {k: v for k, v in {**params, **change}.items() if v is not None}
    signature = RequestValidator(config.twilio_auth_token).compute_signature(accepted.status_callback, params)
    response = await client.post(path, data=params, headers={"X-Twilio-Signature": signature})
    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["detail"]] == [location]


async def test_a_status_callback_without_the_ledger_key_is_422(client, config):
    params = {"MessageSid": "SM" + "0" * 32, "MessageStatus": "delivered"}
    url = config.public_url + TWILIO_STATUS
    signature = RequestValidator(config.twilio_auth_token).compute_signature(url, params)
    response = await client.post(TWILIO_STATUS, data=params, headers={"X-Twilio-Signature": signature})
    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["detail"]] == [["query", "key"]]


async def test_a_status_callback_whose_key_a_proxy_re_encoded_is_applied_by_its_message_sid(
    client, pool, messaging, fakes, config, temporal
):
    order, key, accepted = await sent_sms(pool, messaging, fakes)
    # What a proxy that decodes and re-encodes the query passes on: ':' no longer
    # percent-encoded is the same key; one that re-encodes it twice is another.
    mangled = accepted.status_callback.replace(quote(key, safe=""), quote(quote(key, safe=""), safe=""))
    assert mangled != accepted.status_callback
    response = await post_callback(client, mangled, accepted.provider_id, "undelivered", 30003, token=config.twilio_auth_token)
    assert response.status_code == 200
    assert (await ledger(pool, key))["delivery"] == "undelivered"
    assert await events_of(pool, key) == [("twilio", "undelivered")]
    assert [(wf, name) for wf, name, _ in temporal.sent] == [(f"order-{order['order_id']}", "message_undelivered")]


# --- Twilio status look-ups --------------------------------------------------------------

# A sweep the test calls itself: each looks up what is due once.
LOOKUPS_BY_HAND = LookupTiming(sweep_every=3600)


@pytest.fixture
async def lookups_config(config: WebConfig, provider_config: ProviderConfig, pool) -> WebConfig:
    """The HTTP service with the Twilio account the worker sends from. The
    ledger is the whole session's: SMS earlier tests sent become due 15
    minutes later, so they are taken out of these tests' sweeps."""
    await pool.execute("UPDATE message_ledger SET status_lookup_at = 'infinity' WHERE provider = 'twilio' AND delivery IS NULL")
    return replace(
        config, twilio_account_sid=provider_config.twilio_account_sid, twilio_api_base_url=provider_config.twilio_api_base_url
    )


def lookups_app(config: WebConfig, pool, temporal, timing: LookupTiming = LOOKUPS_BY_HAND, runtime: Runtime | None = None):
    return create_app(config, pool=pool, temporal_client=temporal, lookup_timing=timing, runtime=runtime)  # type: ignore[arg-type]


async def sent_minutes_ago(pool, key: str, minutes: float) -> None:
    """As if the SMS had been sent that long ago (the test cannot wait)."""
    await pool.execute(
        "UPDATE message_ledger SET sent_at = now() - make_interval(secs => $2) WHERE key = $1", key, minutes * 60
    )


def signals_to(temporal, order: dict) -> list[str]:
    return [name for workflow_id, name, _ in temporal.sent if workflow_id == f"order-{order['order_id']}"]


def fetches_of(fakes: FakeProviders, sid: str) -> int:
    return len([r for r in fakes.requests if r.method == "GET" and r.path.endswith(f"/Messages/{sid}.json")])


async def lookup_state(pool, key: str) -> tuple[int, float | None]:
    """How often the SMS was looked up, and in how many seconds it is next (inf: never)."""
    row = await pool.fetchrow(
        "SELECT status_lookups, extract(epoch FROM status_lookup_at - now())::float8 AS next_in FROM message_ledger WHERE key = $1",
        key,
    )
    return row["status_lookups"], row["next_in"]


@pytest.mark.parametrize(
    "status, error_code, signal, suppresses",
    [("undelivered", 30003, True, False), ("failed", 30005, True, True), ("delivered", None, False, False)],
)
async def test_an_sms_whose_status_callback_was_lost_is_looked_up_and_recorded_as_reported(
    lookups_config, pool, messaging, fakes, temporal, web_metrics, caplog, status: str, error_code: int | None, signal: bool, suppresses: bool
):
    from tests.test_log_privacy import everything_at_debug, logged_text

    everything_at_debug(caplog)
    runtime, port = web_metrics
    order, key, accepted = await sent_sms(pool, messaging, fakes)
    sid, phone = accepted.provider_id, order["customer"]["phone"]
    fakes.set_sms_status(sid, status, error_code)
    app = lookups_app(lookups_config, pool, temporal, runtime=runtime)
    before = await counted(port, "orders_web_sms_status_lookups_total", result="final")

    await sent_minutes_ago(pool, key, 14)  # the callback may still come
    await app.state.sms_statuses.sweep()
    assert fetches_of(fakes, sid) == 0

    await sent_minutes_ago(pool, key, 16)
    await app.state.sms_statuses.sweep()
    assert fetches_of(fakes, sid) == 1
    assert (await ledger(pool, key))["delivery"] == status
    assert await events_of(pool, key) == [("twilio", status)]
    expected = {"reason": f"Twilio {error_code}", "source": "provider"} if suppresses else None
    assert await suppressed(pool, "sms", phone) == expected
    reason = f"{status}: Twilio error {error_code}"
    assert temporal.sent == (
        [(f"order-{order['order_id']}", "message_undelivered", {"kind": "delivery_day", "channel": "sms", "event": status, "reason": reason})]
        if signal else []
    )
    assert (await lookup_state(pool, key)) == (1, math.inf)
    # Looked up once: the next sweeps leave it, and the callback, if Twilio posts it after all, is a repeat.
    await app.state.sms_statuses.sweep()
    assert fetches_of(fakes, sid) == 1
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=lookups_config.public_url) as client:
        late = await post_callback(client, accepted.status_callback, sid, status, error_code, token=lookups_config.twilio_auth_token)
    assert late.json() == {"duplicate": True}
    assert len(temporal.sent) == int(signal)
    await wait_until_async(lambda: counted(port, "orders_web_sms_status_lookups_total", result="final"), lambda n: n > before)
    text = "\n".join(logged_text(r) for r in caplog.records if not r.name.startswith(("httpx", "httpcore")))
    assert f"Twilio status {status} for {key} looked up" in text
    assert phone not in text and phone.lstrip("+") not in text and accepted.text not in text


async def test_a_status_not_final_yet_is_looked_up_again_later_then_given_up_at_72_hours(
    lookups_config, pool, messaging, fakes, temporal
):
    order, key, accepted = await sent_sms(pool, messaging, fakes)
    sid = accepted.provider_id
    fakes.set_sms_status(sid, "sent")  # a carrier that has not reported (yet)
    sweep = lookups_app(lookups_config, pool, temporal).state.sms_statuses.sweep
    await sent_minutes_ago(pool, key, 16)
    await sweep()
    lookups, next_in = await lookup_state(pool, key)
    assert (lookups, round(next_in / 60)) == (1, 15)
    assert (await ledger(pool, key))["delivery"] is None and await events_of(pool, key) == []
    await sweep()  # not due
    assert fetches_of(fakes, sid) == 1

    async def due_now() -> None:
        await pool.execute("UPDATE message_ledger SET status_lookup_at = now() WHERE key = $1", key)

    await due_now()
    await sweep()
    lookups, next_in = await lookup_state(pool, key)
    assert (lookups, round(next_in / 60)) == (2, 30)  # doubling
    # 71 hours after: the next look-up would be past 72 hours, so this is the last.
    await sent_minutes_ago(pool, key, 71 * 60)
    await due_now()
    await sweep()
    assert (await lookup_state(pool, key)) == (3, math.inf)
    await due_now()  # even if it were due: past the horizon
    await sent_minutes_ago(pool, key, 73 * 60)
    await sweep()
    assert fetches_of(fakes, sid) == 3
    assert temporal.sent == []


async def test_a_look_up_twilio_fails_is_tried_again_and_a_message_twilio_does_not_know_is_left(
    lookups_config, pool, messaging, fakes, temporal
):
    order, key, accepted = await sent_sms(pool, messaging, fakes)
    fakes.set_sms_status(accepted.provider_id, "undelivered", 30003)
    fakes.fail_next_lookup(accepted.recipient, 500)
    sweep = lookups_app(lookups_config, pool, temporal).state.sms_statuses.sweep
    await sent_minutes_ago(pool, key, 16)
    await sweep()
    lookups, next_in = await lookup_state(pool, key)
    assert (lookups, round(next_in / 60)) == (1, 15) and (await ledger(pool, key))["delivery"] is None
    await pool.execute("UPDATE message_ledger SET status_lookup_at = now() WHERE key = $1", key)
    await sweep()
    assert (await ledger(pool, key))["delivery"] == "undelivered"
    assert [name for _, name, _ in temporal.sent] == ["message_undelivered"]

    # A SID Twilio answers 404 for (deleted, another account's): never asked again.
    other, other_key, _ = await sent_sms(pool, messaging, fakes)
    unknown = "SM" + uuid.uuid4().hex
    await pool.execute("UPDATE message_ledger SET provider_message_id = $2 WHERE key = $1", other_key, unknown)
    await sent_minutes_ago(pool, other_key, 16)
    await sweep()
    assert (await lookup_state(pool, other_key)) == (1, math.inf)
    assert fetches_of(fakes, unknown) == 1


async def test_replicas_look_up_each_message_once(lookups_config, pool, messaging, fakes):
    sent = [await sent_sms(pool, messaging, fakes) for _ in range(12)]
    for _, key, accepted in sent:
        fakes.set_sms_status(accepted.provider_id, "undelivered", 30003)
        await sent_minutes_ago(pool, key, 16)
    replicas = [FakeTemporal() for _ in range(3)]
    timing = replace(LOOKUPS_BY_HAND, batch=2, at_once=2)
    await asyncio.gather(*(lookups_app(lookups_config, pool, t, timing).state.sms_statuses.sweep() for t in replicas))
    assert [fetches_of(fakes, accepted.provider_id) for _, _, accepted in sent] == [1] * 12
    orders = sorted(f"order-{order['order_id']}" for order, _, _ in sent)
    assert sorted(wf for t in replicas for wf, _, _ in t.sent if wf in orders) == orders


async def test_the_service_looks_up_while_it_runs_and_only_with_twilio_credentials(
    config, lookups_config, pool, messaging, fakes, temporal, caplog
):
    caplog.set_level(logging.INFO, logger="web")
    order, key, accepted = await sent_sms(pool, messaging, fakes)
    fakes.set_sms_status(accepted.provider_id, "undelivered", 30003)
    await sent_minutes_ago(pool, key, 16)
    quick = LookupTiming(sweep_every=0.05)
    without = lookups_app(config, pool, temporal, quick)  # no TWILIO_ACCOUNT_SID
    async with without.router.lifespan_context(without):
        await asyncio.sleep(0.3)
    assert fetches_of(fakes, accepted.provider_id) == 0
    off = [r.getMessage() for r in caplog.records if "look-ups off" in r.getMessage()]
    assert off == ["SMS status look-ups off: TWILIO_ACCOUNT_SID not set, so a lost Twilio status callback stays lost"]

    app = lookups_app(lookups_config, pool, temporal, quick)
    async with app.router.lifespan_context(app):
        await wait_until_async(lambda: ledger(pool, key), lambda row: row["delivery"] == "undelivered")
        # Its relay also delivers what earlier tests left owed: this order's signals only.
        await wait_until(lambda: signals_to(temporal, order))
    assert signals_to(temporal, order) == ["message_undelivered"]


def test_status_look_up_configuration_from_the_environment():
    base = {"UNSUBSCRIBE_SECRET": "s", **TEST_KEY_ENV}
    defaults = WebConfig.from_env(base)
    assert (defaults.twilio_account_sid, defaults.twilio_api_base_url) == (None, "https://api.twilio.com")
    assert (defaults.twilio_status_lookup_after, defaults.provider_timeout) == (timedelta(minutes=15), 10.0)
    config = WebConfig.from_env({
        **base, "TWILIO_ACCOUNT_SID": "AC1", "TWILIO_API_BASE_URL": "http://twilio.test", "TWILIO_STATUS_LOOKUP_AFTER": "5m",
        "PROVIDER_TIMEOUT_SECONDS": "2.5",
    })
    assert (config.twilio_account_sid, config.twilio_api_base_url) == ("AC1", "http://twilio.test")
    assert (config.twilio_status_lookup_after, config.provider_timeout) == (timedelta(minutes=5), 2.5)
    with pytest.raises(ConfigError, match="TWILIO_STATUS_LOOKUP_AFTER"):
        WebConfig.from_env({**base, "TWILIO_STATUS_LOOKUP_AFTER": "later"})
    with pytest.raises(ConfigError, match="PROVIDER_TIMEOUT_SECONDS"):
        WebConfig.from_env({**base, "PROVIDER_TIMEOUT_SECONDS": "0"})


# --- whole journeys ---------------------------------------------------------------------


@pytest.fixture
def journey_web(config: WebConfig, pool):
    """The HTTP service signalling the test's Temporal server."""

    def make(env) -> httpx.AsyncClient:
        app = create_app(config, pool=pool, temporal_client=env.client)
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=config.public_url)

    return make


def touchpoints(view, kind: str) -> list[tuple[str, str]]:
    return [(t.channel.value, t.state.value) for t in view.touchpoints if t.kind.value == kind]


async def test_a_bounced_confirmation_goes_by_sms_once_and_the_address_gets_nothing_more(
    ts_env, make_harness, journey_web, fakes: FakeProviders, pool
):
    order = new_order()
    email, phone = order["customer"]["email"], order["customer"]["phone"]
    async with make_harness(ts_env) as h, journey_web(ts_env) as web:
        handle = await h.start(order)
        view = await h.wait_touchpoint(handle, "order_confirmation")
        key = str(LedgerKey.of_order(order["order_id"], "order_confirmation", "email"))
        bounce = sendgrid_event("bounce", key, type="bounce", reason="550 5.1.1 user unknown")
        # SendGrid posts the same event twice, then reports the mail once more.
        for events in ([bounce], [bounce], [sendgrid_event("dropped", key, reason="Bounced Address")]):
            assert (await post_events(web, events)).status_code == 200
        view = await h.wait_touchpoint(handle, "order_confirmation", "sms")
        # Signals are taken in order: once the payment is in, both reports were.
        await handle.signal("payment_received", payment_for(order))
        view = await h.wait_touchpoint(handle, "payment_confirmation", "sms")
        await handle.terminate("test done")
        await h.keep_history(handle, "message_undelivered")

    assert touchpoints(view, "order_confirmation") == [("email", "sent"), ("email", "undelivered"), ("sms", "sent")]
    assert touchpoints(view, "payment_confirmation") == [("email", "not_permitted"), ("sms", "sent")]
    assert "message_undelivered:order_confirmation:email" in view.attention_reasons
    texts = fakes.deliveries_to(phone)
    assert len([t for t in texts if "confirm" in t.lower() and "payment" not in t.lower()]) == 1, texts
    assert len(texts) == 2
    assert len(fakes.deliveries_to(email)) == 1  # the confirmation that bounced, nothing after


async def test_a_bounce_reported_while_the_send_still_waits_for_sendgrid_is_acted_on_once_it_settles(
    ts_env, make_harness, journey_web, fakes: FakeProviders, pool
):
    order = new_order()
    email = order["customer"]["email"]
    fakes.hang_next(email, 2.0)  # SendGrid takes the mail, and answers 2 s later
    async with make_harness(ts_env) as h, journey_web(ts_env) as web:
        handle = await h.start(order)
        await wait_until(lambda: fakes.deliveries_to(email), timeout=20)
        taken = next(m for m in fakes.accepted if m.recipient == email)
        key = str(LedgerKey.of_order(order["order_id"], "order_confirmation", "email"))
        bounce = sendgrid_event("bounce", key, type="bounce", sg_message_id=f"{taken.provider_id}.filter0001.1.2.0")
        assert (await post_events(web, [bounce])).status_code == 200
        view = await h.wait_touchpoint(handle, "order_confirmation", "sms")
    assert touchpoints(view, "order_confirmation") == [("email", "sent"), ("email", "undelivered"), ("sms", "sent")]
    assert (await ledger(pool, key))["state"] == "sent"
    assert len(fakes.deliveries_to(email)) == 1


async def delivery_day_sms(h, handle, order: dict[str, Any], fakes: FakeProviders, tracking_number: str):
    """Pay, dispatch and send the order out for delivery: the delivery-day SMS, as Twilio took it."""
    await handle.signal("payment_received", payment_for(order))
    # The dispatch must not overtake the payment confirmation's send (see Harness.wait_queues_empty).
    await h.wait_touchpoint(handle, "payment_confirmation")
    await handle.signal(
        "order_dispatched", {"carrier": "DHL", "tracking_number": tracking_number, "expected_delivery": await h.tomorrow()}
    )
    await handle.signal("out_for_delivery", {"date": await h.tomorrow()})
    view = await h.wait_touchpoint(handle, "delivery_day", "sms")
    sms = next(t for t in view.touchpoints if t.kind.value == "delivery_day")
    return next(m for m in fakes.accepted if m.provider_id == sms.provider_message_id)


async def test_an_undelivered_delivery_day_sms_goes_by_email(ts_env, make_harness, journey_web, fakes: FakeProviders, provider_config):
    order = new_order()
    phone = order["customer"]["phone"]
    async with make_harness(ts_env) as h, journey_web(ts_env) as web:
        handle = await h.start(order)
        taken = await delivery_day_sms(h, handle, order, fakes, "T9")
        assert taken.recipient == phone
        response = await post_callback(
            web, taken.status_callback, taken.provider_id, "undelivered", 30003, token=provider_config.twilio_auth_token
        )
        assert response.status_code == 200
        view = await h.wait_touchpoint(handle, "delivery_day", "email")
    assert touchpoints(view, "delivery_day") == [("sms", "sent"), ("sms", "undelivered"), ("email", "sent")]
    assert any("T9" in m for m in fakes.deliveries_to(order["customer"]["email"]) if "today" in m.lower())


async def test_an_sms_whose_undelivered_report_was_lost_goes_by_email_once_looked_up(
    ts_env, make_harness, lookups_config, pool, fakes: FakeProviders
):
    """Twilio's callback never reached the service: the look-up finds the
    SMS undelivered, and the order hands the message to email as if told."""
    order = new_order()
    async with make_harness(ts_env) as h:
        handle = await h.start(order)
        taken = await delivery_day_sms(h, handle, order, fakes, "T8")
        fakes.set_sms_status(taken.provider_id, "undelivered", 30003)
        await sent_minutes_ago(pool, str(LedgerKey.of_order(order["order_id"], "delivery_day", "sms")), 16)
        await lookups_app(lookups_config, pool, ts_env.client).state.sms_statuses.sweep()
        view = await h.wait_touchpoint(handle, "delivery_day", "email")
    assert touchpoints(view, "delivery_day") == [("sms", "sent"), ("sms", "undelivered"), ("email", "sent")]
    assert any("T8" in m for m in fakes.deliveries_to(order["customer"]["email"]) if "today" in m.lower())


async def test_an_sms_reported_undelivered_once_it_is_of_no_use_goes_nowhere_else(
    ts_env, make_harness, journey_web, fakes: FakeProviders, provider_config
):
    """The locker reminder, reported undelivered after the pickup deadline, is stale."""
    order = new_order(delivery={"method": "locker", "locker_id": "WAW-9", "locker_name": "Locker WAW-9"})
    async with make_harness(ts_env) as h, journey_web(ts_env) as web:
        handle = await h.start(order)
        await handle.signal("payment_received", payment_for(order))
        await h.wait_touchpoint(handle, "payment_confirmation")
        await handle.signal("order_dispatched", {"carrier": "InPost", "tracking_number": "IP9", "expected_delivery": await h.tomorrow()})
        await h.wait_touchpoint(handle, "dispatch_notice", "sms")
        await h.wait_queues_empty(handle)
        await handle.signal("order_delivered", {"delivered_at": await h.now_iso(), "locker_pickup_code": "4242"})
        await h.wait_touchpoint(handle, "delivery_confirmation")
        await ts_env.sleep(timedelta(hours=49))
        view = await h.wait_touchpoint(handle, "locker_reminder", "sms")
        reminder = next(t for t in view.touchpoints if t.kind.value == "locker_reminder")
        taken = next(m for m in fakes.accepted if m.provider_id == reminder.provider_message_id)
        await ts_env.sleep(timedelta(hours=24))
        await h.wait_for(handle, lambda v: "locker_not_collected" in v.attention_reasons)
        response = await post_callback(
            web, taken.status_callback, taken.provider_id, "undelivered", 30003, token=provider_config.twilio_auth_token
        )
        assert response.status_code == 200
        view = await h.wait_for(handle, lambda v: ("sms", "undelivered") in touchpoints(v, "locker_reminder"))
        await handle.terminate("test done")
    assert touchpoints(view, "locker_reminder") == [("sms", "sent"), ("sms", "undelivered")]
    assert "locker_reminder:email" not in view.queued_messages


async def test_a_malformed_report_to_the_order_is_dropped_and_the_order_goes_on(ts_env, make_harness):
    order = new_order()
    async with make_harness(ts_env) as h:
        handle = await h.start(order)
        await h.wait_touchpoint(handle, "order_confirmation")
        await handle.signal("message_undelivered", {"kind": "order_confirmation", "channel": "fax", "event": "bounced"})
        await handle.signal("message_undelivered", "bounced")
        await handle.signal("payment_received", payment_for(order))
        view = await h.wait_touchpoint(handle, "payment_confirmation")
        await handle.terminate("test done")
    assert touchpoints(view, "order_confirmation") == [("email", "sent")]
    assert not view.needs_attention


async def test_provider_events_log_no_address_number_or_reason(client, pool, messaging, fakes, config, caplog):
    from tests.test_log_privacy import everything_at_debug, logged_text

    everything_at_debug(caplog)
    order, key = await sent_mail(pool, messaging)
    email = order["customer"]["email"]
    sms_order, sms_key, accepted = await sent_sms(pool, messaging, fakes)
    caplog.clear()
    await post_events(client, [
        sendgrid_event("bounce", key, type="bounce", email=email, reason=f"550 <{email}> unknown"),
        sendgrid_event("spamreport", key, email=email),
    ])
    await post_callback(client, accepted.status_callback, accepted.provider_id, "failed", 30005, token=config.twilio_auth_token)
    text = "\n".join(logged_text(r) for r in caplog.records if not r.name.startswith(("httpx", "httpcore")))
    assert "SendGrid posted 2 event(s)" in text and "Twilio status failed" in text
    assert [s for s in (email, quote(email), sms_order["customer"]["phone"], "unknown") if s in text] == []
