"""Shared test environment: a real embedded PostgreSQL, the fake providers on
loopback, the time-skipping server for days-long journeys and the dev server
for search attributes, updates and end-to-end runs."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from temporalio.api.history.v1 import History
from temporalio.client import Client, WorkflowHandle, WorkflowHistory
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from activities.config import ProviderConfig, journey_settings_from_env
from bench.history import payloads_in
from codec import KEYS_VARIABLE, DataKeys, payload_keys_from_env
from providers import Provider
from starter.embedded import start_dev_server, start_postgres, start_time_skipping_server
from store.database import create_pool, migrate
from store.erasure_salt import SALT_VARIABLE
from tests.fake_providers import FakeProviders, serve
from worker import build_worker
from workflows import order_lifecycle
from workflows.models import (
    CaseRouting,
    Channel,
    DeliveryState,
    JourneySettings,
    LifecycleSettings,
    MessageOutcome,
    OrderInput,
    OrderStatusView,
)

TWILIO_SID = "AC" + "0" * 32
HISTORIES = Path(__file__).parent / "histories"
NO_QUIET_HOURS = {"sms_quiet_from": timedelta(0), "sms_quiet_until": timedelta(0)}
# The tests' own keys, never used outside the tests: the payload key, fixed
# so that histories recorded with it replay (tests/histories,
# RECORD_HISTORIES=1), and the erasure salt (store/erasure_salt.py).
TEST_ERASURE_SALT = "the tests' own erasure salt"
TEST_KEY_ENV = {KEYS_VARIABLE: "test-1:b25seSB0aGUgdGVzdHMgdXNlIHRoaXMga2V5OiAzMmI=", SALT_VARIABLE: TEST_ERASURE_SALT}
TEST_PAYLOAD_KEYS = payload_keys_from_env(TEST_KEY_ENV)

# tests/skip_rule.py: an unmarked skip fails; tests/long_first.py: long tests start first.
# pytester: the skip rule's own test.
pytest_plugins = ("tests.skip_rule", "tests.long_first", "pytester")


@pytest.fixture(scope="session")
def state_dir() -> Path:
    # Short path: PostgreSQL's unix socket lives in its data directory.
    path = Path(tempfile.mkdtemp(prefix="olt-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
async def database_url(state_dir: Path) -> str:
    url = start_postgres(state_dir / "pg")
    await migrate(url, TEST_ERASURE_SALT)
    return url


@pytest.fixture(scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, erasure_salt=TEST_ERASURE_SALT)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
def data_keys(pool: asyncpg.Pool) -> DataKeys:
    """The tests' master key and the customers' workflows' data keys in the tests' database."""
    return DataKeys(TEST_PAYLOAD_KEYS, pool)


@pytest.fixture(scope="session")
def fakes() -> FakeProviders:
    providers, server = serve()
    yield providers
    server.shutdown()


@pytest.fixture(scope="session")
def provider_config(fakes: FakeProviders) -> ProviderConfig:
    return ProviderConfig(
        sendgrid_api_key="SG.test-key",
        sendgrid_api_host=fakes.base_url,
        email_from="orders@shop.example",
        twilio_account_sid=TWILIO_SID,
        twilio_auth_token="test-token",
        twilio_api_base_url=fakes.base_url,
        twilio_from_number="+15005550006",
        request_timeout=5,
        # In-doubt mail settles after a second, not SendGrid's minutes: the
        # fake shows a mail in Email Activity as soon as it accepts it.
        sendgrid_settle_after=timedelta(seconds=1),
        web_public_url="https://shop.example",
        unsubscribe_secret="test-unsubscribe-secret",
    )


@pytest.fixture
async def ts_env(data_keys: DataKeys) -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping server per test: the server's known fault (see
    Harness.wait_queues_empty) leaves time skipping locked for good, and on a shared
    server it stalled every later test."""
    env = await start_time_skipping_server(data_keys)
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
async def dev_env(data_keys: DataKeys) -> AsyncIterator[WorkflowEnvironment]:
    env = await start_dev_server(None, data_keys)
    yield env
    await env.shutdown()


class Harness:
    """A worker on its own task queue plus helpers to drive one order."""

    def __init__(self, env: WorkflowEnvironment, pool: asyncpg.Pool, task_queue: str) -> None:
        self.env = env
        self.client: Client = env.client
        self.pool = pool
        self.task_queue = task_queue
        self.started: list[WorkflowHandle] = []

    async def start(self, order: dict[str, Any], **kwargs: Any) -> WorkflowHandle:
        handle = await self.client.start_workflow(
            "OrderLifecycle",
            order,
            id=f"order-{order['order_id']}",
            task_queue=self.task_queue,
            result_type=OrderStatusView,
            **kwargs,
        )
        self.started.append(handle)
        if isinstance(order.get("customer"), dict) and "customer_id" in order["customer"]:
            # record_order starts it: ended with the test, or its timers would
            # fire into later tests on the time-skipping server.
            self.started.append(self.client.get_workflow_handle(f"customer-{order['customer']['customer_id']}"))
        return handle

    async def end_leftovers(self) -> None:
        """Terminate what a failed test left running: its retrying activities
        would hold the time-skipping server's clock for every later test."""
        for handle in self.started:
            try:
                await handle.terminate("left over by a test")
            except RPCError:
                pass  # already over

    async def keep_history(self, handle: WorkflowHandle, name: str) -> None:
        """With RECORD_HISTORIES=1, save the history for tests/test_replay.py,
        its payloads under the tests' master key: a workflow's data key lives
        only in this run's database."""
        if os.environ.get("RECORD_HISTORIES") == "1":
            history = await handle.fetch_history()
            events = History(events=history.events)
            codec = self.client.data_converter.payload_codec
            for _, payload in payloads_in(events):
                if payload.metadata.get("encoding") == b"binary/encrypted":
                    [under_master_key] = await codec.encode(await codec.decode([payload]))
                    payload.CopyFrom(under_master_key)
            (HISTORIES / f"{name}.json").write_text(WorkflowHistory(history.workflow_id, list(events.events)).to_json())

    async def now(self) -> datetime:
        """The server's clock: a time-skipping server runs ahead of the wall clock."""
        return await self.env.get_current_time()

    async def tomorrow(self) -> str:
        return ((await self.now()) + timedelta(days=1)).date().isoformat()

    async def now_iso(self) -> str:
        return (await self.now()).isoformat()

    async def result(self, handle: WorkflowHandle, timeout: float = 60) -> OrderStatusView:
        return await asyncio.wait_for(handle.result(), timeout)

    async def wait_for(
        self, handle: WorkflowHandle, predicate: Callable[[Any], bool], timeout: float = 20, view_type: type = OrderStatusView
    ) -> Any:
        """Poll the status query (an order's, or with `view_type` another
        workflow's): tests may poll, the product never does."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            view = await handle.query("status", result_type=view_type)
            if predicate(view):
                return view
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting; last status: {view.model_dump_json(indent=1)}")
            await asyncio.sleep(0.05)

    async def wait_queues_empty(self, handle: WorkflowHandle) -> OrderStatusView:
        """Wait until no message is queued or being sent. On the time-skipping
        server, a signal that supersedes a send whose activity completes at
        that very moment makes the workflow cancel an activity the server has
        already closed: it refuses the task ("ACTIVITY_UNKNOWN", where the real
        server accepts it) and never releases its time-skipping lock, so the
        test hangs. So a test that is not about superseding waits, before an
        event that overtakes a message, until that message's touchpoint is
        recorded and then until this; a test about superseding holds the send
        in its retry backoff (the provider in outage), never completing."""
        return await self.wait_for(handle, lambda v: not v.queued_messages)

    async def wait_touchpoint(self, handle: WorkflowHandle, kind: str, channel: str = "email") -> OrderStatusView:
        return await self.wait_for(
            handle, lambda v: any(t.kind == kind and t.channel == channel for t in v.touchpoints)
        )


@pytest.fixture(scope="session")
def make_harness(pool: asyncpg.Pool, provider_config: ProviderConfig):
    @asynccontextmanager
    async def factory(
        env: WorkflowEnvironment,
        *,
        journey: JourneySettings = journey_settings_from_env({}),
        quiet_hours: bool = False,
        lifecycle: LifecycleSettings | None = None,
        case_routing: CaseRouting | None = None,
        config: ProviderConfig | None = None,
        providers: dict[Channel, Provider] | None = None,
        task_queue: str | None = None,
    ) -> AsyncIterator[Harness]:
        queue = task_queue or f"tq-{uuid.uuid4().hex[:8]}"
        if not quiet_hours:  # a test's outcome must not depend on the hour it runs at
            journey = journey.model_copy(update=NO_QUIET_HOURS)
        worker = build_worker(
            env.client,
            pool,
            config or provider_config,
            journey,
            lifecycle=lifecycle,
            case_routing=case_routing,
            providers=providers,
            task_queue=queue,
        )
        async with worker:
            harness = Harness(env, pool, queue)
            try:
                yield harness
            finally:
                await harness.end_leftovers()

    return factory


async def take_owed_signals_away(pool: asyncpg.Pool) -> None:
    """Marks every signal still owed as delivered. A relay sweeps what is
    owed oldest first and stops at the first one Temporal is away for: a
    signal one test leaves owed would hold up the next test's own."""
    await pool.execute("UPDATE provider_events SET signalled_at = now() WHERE signal IS NOT NULL AND signalled_at IS NULL")


@pytest.fixture
async def no_owed_signals_left(pool: asyncpg.Pool) -> AsyncIterator[None]:
    """For tests that owe signals no relay delivers (an erasure's)."""
    yield
    await take_owed_signals_away(pool)


@pytest.fixture
async def no_owed_signals_before(pool: asyncpg.Pool) -> None:
    """For tests of the relay: only their own signals are owed."""
    await take_owed_signals_away(pool)


def new_order(**overrides: Any) -> dict[str, Any]:
    """A valid order with unique ids, as a backend would send it."""
    uid = uuid.uuid4().hex[:10]
    order: dict[str, Any] = {
        "order_id": f"A{uid}",
        "placed_at": datetime.now(timezone.utc).isoformat(),
        "currency": "EUR",
        "customer": {
            "customer_id": f"C{uid}",
            "name": "Ada <Lovelace>",
            "email": f"ada.{uid}@example.com",
            "phone": "+48600" + str(int(uid, 16) % 1_000_000).zfill(6),
            "timezone": "Europe/Warsaw",
            "marketing_consent": {"email": True},
        },
        "items": [
            {"sku": f"KB-{uid}", "name": "Mechanical keyboard", "quantity": 1, "unit_price": "89.90", "category": "keyboards"},
            {"sku": "MOUSE-1", "name": "Mouse", "quantity": 2, "unit_price": "10.05", "category": "mice"},
        ],
        "delivery": {
            "method": "address",
            "address": {"line1": "Main St 1", "city": "Warsaw", "postal_code": "00-001", "country": "PL"},
        },
        "seller": {"seller_id": "S1", "name": "Gadgets & Co", "sends_delivery_day_notice": True},
    }
    order.update(overrides)
    return order


def payment_for(order: dict[str, Any]) -> dict[str, Any]:
    from decimal import Decimal

    total = sum(Decimal(i["unit_price"]) * i["quantity"] for i in order["items"])
    return {"payment_id": f"P-{order['order_id']}", "amount": str(total), "currency": order["currency"]}


async def store(pool: asyncpg.Pool, order: dict[str, Any] | OrderInput) -> None:
    """Record an order in PostgreSQL as record_order does, without its workflows."""
    from store.orders import store_order

    async with pool.acquire() as conn, conn.transaction():
        await store_order(conn, order if isinstance(order, OrderInput) else OrderInput.model_validate(order))


async def continue_as_new(h: Harness, handle: WorkflowHandle) -> WorkflowHandle:
    """The order's workflow continues as new now, as it does once its history
    is long (the one place tests change that limit): lowered to this run's
    length, the run woken by a signal that changes nothing, the limit put back
    once the next run has started. Waits first until no message is queued or
    being sent, since the hand-over withdraws a send waiting for its retry.
    Returns a handle that follows the order into its latest run."""
    latest = h.client.get_workflow_handle(handle.id, result_type=OrderStatusView)
    await h.wait_for(latest, lambda v: not v.queued_messages)
    run_id = (await latest.describe()).run_id
    length = len((await latest.fetch_history()).events)
    limit = order_lifecycle.CONTINUE_AS_NEW_AFTER_EVENTS
    order_lifecycle.CONTINUE_AS_NEW_AFTER_EVENTS = length
    try:
        await latest.signal(
            "message_settled", MessageOutcome(key="no message of this order", channel=Channel.EMAIL, state=DeliveryState.SENT)
        )
        deadline = asyncio.get_running_loop().time() + 20
        while (await latest.describe()).run_id == run_id:
            assert asyncio.get_running_loop().time() < deadline, "the order did not continue as new"
            await asyncio.sleep(0.05)
    finally:
        order_lifecycle.CONTINUE_AS_NEW_AFTER_EVENTS = limit
    h.started.append(latest)
    return latest

