"""A provider's report the HTTP service has recorded reaches the order's
workflow even when Temporal could not take the signal at that moment (a
restart, an outage) or the service stopped between recording and signalling:
Twilio posts a status callback once, so the service itself owes the signal
until it is delivered."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from typing import Any

import asyncpg
import httpx
import pytest
from google.protobuf.any_pb2 import Any as ProtoAny
from temporalio.api.common.v1 import GrpcStatus
from temporalio.api.enums.v1 import ResourceExhaustedCause, ResourceExhaustedScope
from temporalio.api.errordetails.v1 import ResourceExhaustedFailure
from temporalio.service import RPCError, RPCStatusCode

from store import provider_events
from tests.conftest import new_order
from tests.fake_providers import FakeProviders
from tests.test_exactly_once import wait_until
from tests.test_provider_events import (  # noqa: F401 (fixtures)
    config,
    delivery_day_sms,
    ledger,
    messaging,
    post_callback,
    post_events,
    sendgrid_event,
    sendgrid_headers,
    sent_mail,
    sent_sms,
    touchpoints,
)
from tests.test_web import FakeTemporal
from web.app import create_app
from web.signals import RelayTiming
from workflows.ledger_key import LedgerKey

# Quick, so a test waits fractions of a second for a retry.
QUICK = RelayTiming(first_retry=0.05, max_retry=0.2, sweep_every=0.2)


class TemporalAway:
    """A client that cannot reach Temporal while `down`; otherwise `client`'s."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.down = True
        # By workflow id: other tests' owed signals in the session's database come too.
        self.attempts: Counter[str] = Counter()

    def get_workflow_handle(self, workflow_id: str) -> Any:
        away, real = self, self.client.get_workflow_handle(workflow_id)

        class Handle:
            async def signal(self, name: str, arg: Any, **kwargs: Any) -> None:
                away.attempts[workflow_id] += 1
                if away.down:
                    raise RPCError("tcp connect error", RPCStatusCode.UNAVAILABLE, b"")
                await real.signal(name, arg, **kwargs)

        return Handle()


# Each test's relay sweeps every owed signal: only its own are.
pytestmark = pytest.mark.usefixtures("no_owed_signals_before")


async def owed(pool: asyncpg.Pool, *workflow_ids: str) -> int:
    """Signals still owed to these workflows (other tests' may be owed too)."""
    return await pool.fetchval(
        "SELECT count(*) FROM provider_events WHERE signal IS NOT NULL AND signalled_at IS NULL AND workflow_id = ANY($1)",
        list(workflow_ids),
    )


def sent_to(temporal: FakeTemporal, *workflow_ids: str) -> list[tuple[str, str, Any]]:
    return [s for s in temporal.sent if s[0] in workflow_ids]


async def reports_left_owed(pool, messaging, fakes: FakeProviders, n: int = 1, status: str = "undelivered") -> list[str]:
    """`n` SMS sent and reported `status`, recorded with their signals still
    owed, as a service killed between its commit and its signal leaves them;
    the orders' workflow ids."""
    orders = []
    for _ in range(n):
        order, key, _ = await sent_sms(pool, messaging, fakes)
        code = 30008 if status == "failed" else 30003
        event = provider_events.from_twilio(ledger_key=key, message_sid="SM" + uuid.uuid4().hex, status=status, error_code=code)
        async with pool.acquire() as conn, conn.transaction():
            assert (await provider_events.record(conn, event)).signal is not None
        orders.append(f"order-{order['order_id']}")
    return orders


async def test_an_sms_reported_undelivered_while_temporal_is_away_reaches_the_order_when_it_is_back(
    ts_env, make_harness, config, pool, fakes: FakeProviders, provider_config
):
    order = new_order()
    away = TemporalAway(ts_env.client)
    app = create_app(config, pool=pool, temporal_client=away, relay_timing=QUICK)  # type: ignore[arg-type]
    async with (
        make_harness(ts_env) as h,
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=config.public_url) as web,
    ):
        handle = await h.start(order)
        taken = await delivery_day_sms(h, handle, order, fakes, "T7")
        # Twilio posts this once: the answer must not depend on Temporal.
        response = await post_callback(
            web, taken.status_callback, taken.provider_id, "undelivered", 30003, token=provider_config.twilio_auth_token
        )
        assert response.status_code == 200
        key = str(LedgerKey.of_order(order["order_id"], "delivery_day", "sms"))
        assert (await ledger(pool, key))["delivery"] == "undelivered"
        await wait_until(lambda: away.attempts[handle.id] >= 3, timeout=10)  # retried while away
        assert touchpoints(await h.wait_touchpoint(handle, "delivery_day", "sms"), "delivery_day") == [("sms", "sent")]

        away.down = False
        view = await h.wait_touchpoint(handle, "delivery_day", "email")
        await h.wait_queues_empty(handle)
        await handle.terminate("test done")
    assert touchpoints(view, "delivery_day") == [("sms", "sent"), ("sms", "undelivered"), ("email", "sent")]
    assert await owed(pool, handle.id) == 0


async def test_a_sendgrid_post_while_temporal_is_away_is_answered_200_and_the_order_hears_once_when_it_is_back(
    config, pool, messaging
):
    order, key = await sent_mail(pool, messaging)
    workflow_id = f"order-{order['order_id']}"
    away = TemporalAway(FakeTemporal())
    app = create_app(config, pool=pool, temporal_client=away, relay_timing=QUICK)  # type: ignore[arg-type]
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=config.public_url) as web,
    ):
        bounce = sendgrid_event("bounce", key, type="bounce")
        assert (await post_events(web, [bounce])).status_code == 200
        assert (await ledger(pool, key))["delivery"] == "bounced"
        await wait_until(lambda: away.attempts[workflow_id] >= 2, timeout=10)
        # SendGrid's own repeat changes nothing, while away or after.
        assert (await post_events(web, [bounce])).json() == {"received": 1, "duplicates": 1, "unreadable": 0}
        away.down = False
        await wait_until(lambda: sent_to(away.client, workflow_id), timeout=10)
        assert (await post_events(web, [bounce])).status_code == 200
        await asyncio.sleep(3 * QUICK.sweep_every)
    assert [(wf, name) for wf, name, _ in sent_to(away.client, workflow_id)] == [(workflow_id, "message_undelivered")]
    assert await owed(pool, workflow_id) == 0


async def test_a_report_recorded_by_a_service_that_stopped_before_signalling_is_signalled_when_one_starts(
    config, pool, messaging, fakes: FakeProviders
):
    [workflow_id] = await reports_left_owed(pool, messaging, fakes, status="failed")
    temporal = FakeTemporal()
    app = create_app(config, pool=pool, temporal_client=temporal, relay_timing=QUICK)  # type: ignore[arg-type]
    async with app.router.lifespan_context(app):
        await wait_until(lambda: sent_to(temporal, workflow_id), timeout=10)
    assert sent_to(temporal, workflow_id) == [
        (
            workflow_id,
            "message_undelivered",
            {"kind": "delivery_day", "channel": "sms", "event": "failed", "reason": "failed: Twilio error 30008"},
        )
    ]
    assert await owed(pool, workflow_id) == 0


async def test_replicas_relaying_the_same_owed_signals_send_each_once(config, pool, messaging, fakes: FakeProviders):
    orders = await reports_left_owed(pool, messaging, fakes, 40)
    replicas = [FakeTemporal() for _ in range(3)]
    apps = [create_app(config, pool=pool, temporal_client=t, relay_timing=QUICK) for t in replicas]  # type: ignore[arg-type]
    await asyncio.gather(*(app.state.owed_signals.deliver() for app in apps))
    sent = sorted(wf for t in replicas for wf, _, _ in sent_to(t, *orders))
    assert sent == sorted(orders)
    assert await owed(pool, *orders) == 0


async def test_a_report_is_answered_before_its_order_is_told(config, pool, messaging):
    """However long Temporal takes to take the signal, the provider has its
    200 first: SendGrid and Twilio time out slow webhooks and post again."""
    order, key = await sent_mail(pool, messaging)
    release = asyncio.Event()

    class SlowTemporal(FakeTemporal):
        def get_workflow_handle(self, workflow_id: str) -> Any:
            temporal = self

            class Handle:
                async def signal(self, name: str, arg: Any, **kwargs: Any) -> None:
                    await release.wait()
                    temporal.sent.append((workflow_id, name, arg))

            return Handle()

    temporal = SlowTemporal()
    app = create_app(config, pool=pool, temporal_client=temporal)  # type: ignore[arg-type]
    body = json.dumps([sendgrid_event("bounce", key, type="bounce")]).encode()
    headers = [(k.lower().encode(), v.encode()) for k, v in sendgrid_headers(body).items()]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/webhooks/sendgrid/events", "raw_path": b"/webhooks/sendgrid/events", "query_string": b"",
        "headers": [(b"host", b"localhost"), (b"content-length", str(len(body)).encode()), *headers],
        "client": ("127.0.0.1", 1), "server": ("localhost", 80), "state": {},
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    call = asyncio.create_task(app(scope, receive, send))
    try:
        await wait_until(lambda: any(m["type"] == "http.response.body" and not m.get("more_body") for m in sent))
        assert next(m["status"] for m in sent if m["type"] == "http.response.start") == 200
        assert temporal.sent == []  # answered; the order not told yet
    finally:
        release.set()
    await asyncio.wait_for(call, 10)
    assert [name for _, name, _ in temporal.sent] == ["message_undelivered"]


async def test_a_signal_temporal_refuses_holds_up_none_of_the_others(config, pool, messaging, fakes: FakeProviders):
    """One report's signal is refused (not Temporal being away): it stays
    owed, for a later pass, and the ones after it are delivered now."""
    orders = await reports_left_owed(pool, messaging, fakes, 3)
    refused = orders[0]

    class Refusing(FakeTemporal):
        def get_workflow_handle(self, workflow_id: str) -> Any:
            handle = super().get_workflow_handle(workflow_id)
            if workflow_id != refused:
                return handle

            class Refused:
                async def signal(self, name: str, arg: Any, **kwargs: Any) -> None:
                    raise RPCError("bad request", RPCStatusCode.INVALID_ARGUMENT, b"")

            return Refused()

    temporal = Refusing()
    relay = create_app(config, pool=pool, temporal_client=temporal, relay_timing=QUICK).state.owed_signals  # type: ignore[arg-type]
    assert await relay.deliver() is True and not relay.temporal_away
    assert sorted(wf for wf, _, _ in sent_to(temporal, *orders)) == sorted(orders[1:])
    assert await owed(pool, refused) == 1 and await owed(pool, *orders[1:]) == 0


async def test_the_relay_goes_on_after_a_pass_that_failed(config, pool, messaging, fakes: FakeProviders):
    [workflow_id] = await reports_left_owed(pool, messaging, fakes, status="failed")
    temporal = FakeTemporal()
    app = create_app(config, pool=pool, temporal_client=temporal, relay_timing=QUICK)  # type: ignore[arg-type]
    passes = 0

    def flaky_pool() -> asyncpg.Pool:  # a bug, or the pool closing: the first pass fails
        nonlocal passes
        passes += 1
        if passes == 1:
            raise asyncpg.InterfaceError("pool is closing")
        return pool

    app.state.owed_signals._pool = flaky_pool
    async with app.router.lifespan_context(app):
        await wait_until(lambda: sent_to(temporal, workflow_id), timeout=10)
    assert passes > 1


def resource_exhausted(cause: int, scope: int = 0) -> RPCError:
    """RESOURCE_EXHAUSTED as Temporal answers it, its cause and scope in the details."""
    detail = ProtoAny()
    detail.Pack(ResourceExhaustedFailure(cause=cause, scope=scope))
    status = GrpcStatus(code=RPCStatusCode.RESOURCE_EXHAUSTED.value, message="resource exhausted", details=[detail])
    return RPCError("resource exhausted", RPCStatusCode.RESOURCE_EXHAUSTED, status.SerializeToString())


class OneOrderExhausted(FakeTemporal):
    """Every signal to `exhausted` is answered with `error`; the others are taken."""

    def __init__(self, exhausted: str, error: RPCError) -> None:
        super().__init__()
        self.exhausted, self.error = exhausted, error

    def get_workflow_handle(self, workflow_id: str) -> Any:
        handle = super().get_workflow_handle(workflow_id)
        if workflow_id != self.exhausted:
            return handle
        error = self.error

        class Exhausted:
            async def signal(self, name: str, arg: Any, **kwargs: Any) -> None:
                raise error

        return Exhausted()


async def test_an_order_over_its_own_limits_holds_up_none_of_the_others(config, pool, messaging, fakes: FakeProviders):
    """RESOURCE_EXHAUSTED for one workflow (busy, over its own limits) is
    that order's problem, tried again once its claim runs out: the relay
    goes on with the rest and Temporal is not taken for away."""
    orders = await reports_left_owed(pool, messaging, fakes, 3)
    busy = resource_exhausted(ResourceExhaustedCause.RESOURCE_EXHAUSTED_CAUSE_BUSY_WORKFLOW)
    temporal = OneOrderExhausted(orders[0], busy)
    relay = create_app(config, pool=pool, temporal_client=temporal, relay_timing=QUICK).state.owed_signals  # type: ignore[arg-type]
    assert await relay.deliver() is True and not relay.temporal_away
    assert sorted(wf for wf, _, _ in sent_to(temporal, *orders)) == sorted(orders[1:])
    assert await owed(pool, orders[0]) == 1 and await owed(pool, *orders[1:]) == 0
    # Claimed for a while, so the next pass does not ask that order again at once.
    assert await relay.deliver() is True
    assert await owed(pool, orders[0]) == 1


async def test_a_namespace_over_its_rate_limit_is_temporal_away(config, pool, messaging, fakes: FakeProviders):
    """The namespace's limits hold for every order: the relay backs off
    rather than call Temporal for each of them."""
    orders = await reports_left_owed(pool, messaging, fakes, 2)
    limited = resource_exhausted(
        ResourceExhaustedCause.RESOURCE_EXHAUSTED_CAUSE_RPS_LIMIT, ResourceExhaustedScope.RESOURCE_EXHAUSTED_SCOPE_NAMESPACE
    )
    temporal = OneOrderExhausted(orders[0], limited)
    relay = create_app(config, pool=pool, temporal_client=temporal, relay_timing=QUICK).state.owed_signals  # type: ignore[arg-type]
    assert await relay.deliver() is False and relay.temporal_away
    assert sent_to(temporal, *orders) == []
    assert await owed(pool, *orders) == 2
