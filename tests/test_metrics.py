"""Prometheus metrics: the worker's endpoint (METRICS_PORT) after real
journeys, and the HTTP service's (WEB_METRICS_PORT) after rejected requests.
Both processes run as in production, as child processes, and are scraped over
HTTP. No label may carry anything about a customer or an order."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone

import asyncpg
import httpx
import pytest
from twilio.request_validator import RequestValidator

from bench.driver import bench_order, new_run_id
from bench.prometheus import Sample, free_port, parse, scrape, total
from bench.stack import REPO, Stack, start_stack, wait_for_pollers
from starter.cli import UsageError, place_order, send_event
from starter.demo import payment
from tests.conftest import TEST_ERASURE_SALT, Harness
from workflows.models import TASK_QUEUE, OrderStatusView, workflow_id_for

import worker


async def scrape_until(port: int, ready: Callable[[list[Sample]], bool], timeout: float = 30) -> tuple[str, list[Sample]]:
    """The endpoint's text once `ready` holds (metrics reach the exporter a
    moment after the workflow task that counted them)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        text = await scrape(port)
        samples = parse(text)
        if ready(samples) or asyncio.get_running_loop().time() > deadline:
            return text, samples
        await asyncio.sleep(0.5)


def recorded(kind: str, channel: str, state: str | None = None) -> Callable[[OrderStatusView], bool]:
    return lambda v: any(t.kind == kind and t.channel == channel and state in (None, t.state) for t in v.touchpoints)


async def status_until(stack: Stack, order_id: str, ready: Callable[[OrderStatusView], bool]) -> OrderStatusView:
    harness = Harness(stack.env, pool=None, task_queue=TASK_QUEUE)  # type: ignore[arg-type]
    return await harness.wait_for(stack.client.get_workflow_handle(workflow_id_for(order_id)), ready, timeout=60)


def test_metrics_port_settings():
    def address(env: dict[str, str]) -> str | None:
        return worker.metrics_address(env, "METRICS_PORT", worker.DEFAULT_METRICS_PORT)

    assert address({}) == "127.0.0.1:9464"
    assert address({"METRICS_PORT": "0"}) is None and address({"METRICS_PORT": ""}) is None
    assert address({"METRICS_PORT": "9500", "METRICS_HOST": "0.0.0.0"}) == "0.0.0.0:9500"
    with pytest.raises(SystemExit, match="METRICS_PORT must be a port number"):
        address({"METRICS_PORT": "ninety"})


def test_a_busy_metrics_port_stops_the_worker_with_the_setting_to_change():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "METRICS_PORT": str(port), "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
        done = subprocess.run([sys.executable, "worker.py"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert f"127.0.0.1:{port}" in done.stderr and "METRICS_PORT" in done.stderr, done.stderr


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    stack = await start_stack()
    try:
        yield stack
    finally:
        await stack.shutdown()


async def test_worker_counts_messages_deadlines_and_rejections_by_kind_only(stack: Stack):
    port = free_port()
    # A short provider timeout and settling window: the mail left unanswered
    # below is in doubt within seconds, and stays so, since Email Activity is
    # refused. (The bench's journey has no SMS quiet hours.)
    worker = stack.our_worker(provider_timeout=1.0, extra={"METRICS_PORT": str(port), "SENDGRID_SETTLE_AFTER": "1s"})
    stack.fakes.refuse_email_activity(403)
    worker.start()
    await wait_for_pollers(stack)
    client, fakes = stack.client, stack.fakes
    run = new_run_id()
    happy, unpaid = bench_order(0, run), bench_order(1, run)
    # Never paid: the payment deadline passes; its confirmation goes unanswered.
    unpaid["journey"] = {"payment_reminder_after": "PT1S", "payment_deadline": "PT3S"}
    fakes.hang_next(unpaid["customer"]["email"], 3.0)
    await place_order(client, unpaid)

    # Paid, paid again (refused, by signal and by update), then dispatched and
    # delivered while Twilio is down: its SMS are overtaken, superseded.
    oid = happy["order_id"]
    await place_order(client, happy)
    await status_until(stack, oid, recorded("order_confirmation", "email"))
    await client.get_workflow_handle(workflow_id_for(oid)).signal("payment_received", payment(happy))
    await status_until(stack, oid, recorded("payment_confirmation", "email"))
    await client.get_workflow_handle(workflow_id_for(oid)).signal("payment_received", payment(happy))
    with pytest.raises(UsageError, match="duplicate payment"):
        await send_event(client, oid, "payment_received", payment(happy), sync=True)
    today = datetime.now(timezone.utc).date().isoformat()
    fakes.start_outage("sms")
    try:
        await send_event(client, oid, "order_dispatched", {"carrier": "DHL", "tracking_number": "T1", "expected_delivery": today}, sync=False)
        await status_until(stack, oid, recorded("dispatch_notice", "email"))
        await send_event(client, oid, "out_for_delivery", {"date": today}, sync=False)
        await send_event(client, oid, "order_delivered", {"delivered_at": datetime.now(timezone.utc).isoformat()}, sync=False)
        await status_until(stack, oid, recorded("dispatch_notice", "sms", "superseded"))
    finally:
        fakes.end_outage("sms")
    results = [await asyncio.wait_for(client.get_workflow_handle(workflow_id_for(o["order_id"])).result(), 60) for o in (happy, unpaid)]
    assert [r["status"] for r in results] == ["completed", "cancelled"]

    def messages(**labels: str) -> float:
        return total(samples, "orders_messages_total", **labels)

    text, samples = await scrape_until(
        port, lambda s: total(s, "temporal_workflow_completed_total", workflow_type="OrderLifecycle") >= 2
    )
    assert messages(touchpoint="order_confirmation", channel="email", outcome="sent") == 1
    assert messages(touchpoint="order_confirmation", channel="email", outcome="in_doubt") == 1
    assert messages(touchpoint="dispatch_notice", channel="sms", outcome="superseded") == 1
    assert messages(touchpoint="dispatch_notice", channel="email", outcome="sent") == 1
    assert messages(touchpoint="order_cancelled", channel="email", outcome="sent") == 1
    # The customer's journey: a welcome after the first delivered order.
    assert messages(touchpoint="welcome", channel="email", outcome="sent") == 1
    # Every message the orders recorded, once each (the mail in doubt is
    # recorded twice: left in doubt, then settled, here to stay in doubt),
    # and the welcome.
    assert messages() == sum(len(r["touchpoints"]) for r in results) - 1 + 1
    # And how long each waited in its lane (none here was a fallback already overtaken).
    assert total(samples, "orders_message_wait_seconds_count") == messages()
    assert total(samples, "orders_deadline_breaches_total", deadline="payment_deadline") == 1
    assert total(samples, "orders_deadline_breaches_total") == 1
    assert total(samples, "orders_events_rejected_total", event="payment_received", reason="duplicate", via="signal") == 1
    assert total(samples, "orders_events_rejected_total", event="payment_received", reason="duplicate", via="update") == 1
    def requests(**labels: str) -> float:
        return total(samples, "orders_provider_request_seconds_count", **labels)

    assert requests(provider="sendgrid", request="send", result="ok") == messages(channel="email", outcome="sent")
    assert requests(provider="sendgrid", request="send", result="may_have_arrived") == 1
    assert requests(provider="twilio", request="send", result="never_arrived") >= 1
    # The SDK's own metrics on the same endpoint, in Prometheus' conventions.
    assert total(samples, "temporal_activity_execution_latency_seconds_count", activity_type="send_message") > 0
    for order in (happy, unpaid):
        customer = order["customer"]
        for personal in (order["order_id"], customer["customer_id"], customer["email"], customer["phone"], customer["name"]):
            assert personal not in text
    assert run not in text


def webhook_signature(token: str, url: str, params: dict[str, str]) -> dict[str, str]:
    return {"X-Twilio-Signature": RequestValidator(token).compute_signature(url, params)}


@pytest.mark.usefixtures("no_owed_signals_before")  # the relay it starts sweeps every owed signal
async def test_web_service_counts_rejected_requests_on_its_own_port(database_url: str):
    port, metrics_port = free_port(), free_port()
    twilio_token = uuid.uuid4().hex
    public_url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "UNSUBSCRIBE_SECRET": uuid.uuid4().hex,
        "ERASURE_SALT": TEST_ERASURE_SALT,
        "TWILIO_AUTH_TOKEN": twilio_token,
        "WEB_PORT": str(port),
        "WEB_PUBLIC_URL": public_url,
        "WEB_METRICS_PORT": str(metrics_port),
        "TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
        # The service refuses to start without a payload key.
        "PAYLOAD_ENCRYPTION_KEYS": "test:" + base64.b64encode(os.urandom(32)).decode(),
    }
    # A report recorded while Temporal was away: the relay owes its signal.
    owed_event = uuid.uuid4().hex
    conn = await asyncpg.connect(database_url)
    service = None
    try:
        await conn.execute(
            "INSERT INTO provider_events (provider, event_id, event, workflow_id, signal_name, signal)"
            " VALUES ('twilio', $1, 'undelivered', 'order-owed', 'message_undelivered', '{}')",
            owed_event,
        )
        service = subprocess.Popen([sys.executable, "-m", "starter.cli", "web"], cwd=REPO, env=env)
        async with httpx.AsyncClient(base_url=public_url) as http:
            await until_healthy(http, service)
            params = {"From": "+48600100200", "To": "+15005550006"}  # no Body
            assert (await http.post("/webhooks/twilio/inbound", data={**params, "Body": "STOP"})).status_code == 403
            signed = webhook_signature(twilio_token, public_url + "/webhooks/twilio/inbound", params)
            assert (await http.post("/webhooks/twilio/inbound", data=params, headers=signed)).status_code == 422
            assert (await http.get("/unsubscribe", params={"token": "not-a-token"})).status_code == 400
            assert (await http.get("/no-such-page")).status_code == 404
            assert (await http.get("/metrics")).status_code == 404  # not on the public port
        text, samples = await scrape_until(
            metrics_port,
            lambda s: total(s, "orders_web_rejected_requests_total") >= 4
            and total(s, "orders_web_signals_total", outcome="unreachable") >= 1
            and total(s, "orders_web_owed_signals") >= 1,
        )
    finally:
        if service:
            service.terminate()
            service.wait(30)
        await conn.execute("DELETE FROM provider_events WHERE event_id = $1", owed_event)
        await conn.close()

    def rejected(**labels: str) -> float:
        return total(samples, "orders_web_rejected_requests_total", **labels)

    assert rejected(endpoint="/webhooks/twilio/inbound", status="403", reason="bad_signature") == 1
    assert rejected(endpoint="/webhooks/twilio/inbound", status="422", reason="invalid_field") == 1
    assert rejected(endpoint="/unsubscribe", status="400", reason="token_malformed") == 1
    # An unknown path is one series, whatever was asked for.
    assert rejected(endpoint="unmatched", status="404", reason="not_found") == 2
    assert rejected() == 5
    assert "+48600100200" not in text and "no-such-page" not in text and "not-a-token" not in text
    # Temporal is at a closed port: the owed signal is retried, and still owed.
    assert total(samples, "orders_web_signals_total", signal="message_undelivered", outcome="unreachable") >= 1
    assert total(samples, "orders_web_signals_total", outcome="delivered") == 0
    assert "order-owed" not in text


async def until_healthy(http: httpx.AsyncClient, service: subprocess.Popen, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        assert service.poll() is None, "the HTTP service exited"
        try:
            if (await http.get("/healthz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("the HTTP service did not come up")
        await asyncio.sleep(0.2)
