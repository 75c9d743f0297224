"""What providers report after they took a message: SendGrid's signed Event
Webhook and Twilio's status callbacks, through the HTTP service to the
ledger, the suppression list and the order's workflow.

Ledger rows come from real sends (send_message against the fakes); the
events are signed the way SendGrid and Twilio sign them, with a key pair made
here and the auth token the fakes use."""

from __future__ import annotations

import base64
import json
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
from temporalio.service import RPCError, RPCStatusCode
from twilio.request_validator import RequestValidator

from activities.config import ProviderConfig
from activities.messaging import MessagingActivities
from tests.conftest import TEST_KEY_ENV, new_order, payment_for
from tests.fake_providers import FakeProviders
from tests.fake_reports import SIGNATURE, TIMESTAMP, new_key_pair
from tests.fake_reports import sendgrid_headers as signed_as_sendgrid
from tests.test_consent_sending import customer, journey_message, order_message, send
from tests.test_exactly_once import wait_until
from tests.test_web import FakeTemporal, client, temporal, unused_port  # noqa: F401 (fixtures)
from web.app import create_app
from web.config import ConfigError, WebConfig
from workflows.models import Channel, DeliveryState, Touchpoint

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
    # The public URL the worker writes into StatusCallback; Temporal at a closed port.
    return WebConfig(
        unsubscribe_secret="s",
        database_url=database_url,
        public_url=provider_config.web_public_url,
        twilio_auth_token=provider_config.twilio_auth_token,
        sendgrid_webhook_public_key=PUBLIC_KEY,
        temporal_env={"TEMPORAL_ADDRESS": f"127.0.0.1:{unused_port()}", **TEST_KEY_ENV},
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
    assert response.json() == {"received": 2, "duplicates": 0}
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
    assert again.json() == {"received": 2, "duplicates": 1}
    assert await events_of(pool, key) == [("sendgrid", "bounce"), ("sendgrid", "deferred")]
    assert len(temporal.sent) == 1


@pytest.mark.parametrize(
    "bad, location",
    [
        ({"event": "delivered", "timestamp": 1, "message_key": "k"}, ["body", 1, "sg_event_id"]),
        ({"sg_event_id": "e1", "event": "delivered", "timestamp": "noon"}, ["body", 1, "timestamp"]),
        ({"sg_event_id": "e1", "timestamp": 1}, ["body", 1, "event"]),
    ],
    ids=["no event id", "bad timestamp", "no event"],
)
async def test_a_malformed_sendgrid_event_is_422_naming_the_field(client, pool, bad, location):
    ok = sendgrid_event("delivered", None)
    response = await post_events(client, [ok, bad])
    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["detail"]] == [location]
    # Nothing of the batch is kept: SendGrid posts it again, whole.
    assert await pool.fetchval("SELECT count(*) FROM provider_events WHERE event_id = $1", ok["sg_event_id"]) == 0


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
    unknown = f"order-nobody-{uuid.uuid4().hex[:6]}:order_confirmation:email"
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
        assert (await post_events(client, [bounce])).json() == {"received": 1, "duplicates": 1}
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
        key = f"order-{order['order_id']}:order_confirmation:email"
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
        key = f"order-{order['order_id']}:order_confirmation:email"
        bounce = sendgrid_event("bounce", key, type="bounce", sg_message_id=f"{taken.provider_id}.filter0001.1.2.0")
        assert (await post_events(web, [bounce])).status_code == 200
        view = await h.wait_touchpoint(handle, "order_confirmation", "sms")
    assert touchpoints(view, "order_confirmation") == [("email", "sent"), ("email", "undelivered"), ("sms", "sent")]
    assert (await ledger(pool, key))["state"] == "sent"
    assert len(fakes.deliveries_to(email)) == 1


async def delivery_day_sms(h, handle, order: dict[str, Any], fakes: FakeProviders, tracking_number: str):
    """Pay, dispatch and send the order out for delivery: the delivery-day SMS, as Twilio took it."""
    await handle.signal("payment_received", payment_for(order))
    # The dispatch must not overtake the payment confirmation's send (see Harness.settled).
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
        await h.settled(handle)
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
