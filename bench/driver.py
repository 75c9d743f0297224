"""Drives orders through the happy path the way a shop's backend would, and
times each signal until the message it causes reaches the provider (for our
workflow) or until the matching do-nothing activity runs (for the floor)."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from bench.floor import FLOOR_TASK_QUEUE, FLOOR_WORKFLOW, floor_customer_workflow_id
from starter.cli import place_order
from starter.demo import payment as payment_for
from tests.fake_providers import BOUNCING_EMAIL_DOMAIN, AcceptedMessage
from workflows.clock import local_date
from workflows.ledger_key import LedgerKey
from workflows.models import customer_workflow_id, workflow_id_for

# Categories of a small shop; every order buys two products from one or two
# of them, so later orders have something to recommend.
CATALOGUE = [(f"SKU-{c[:3].upper()}-{n}", f"{c.title()} {n}", f"{10 + 7 * n}.90", c) for c in ("keyboards", "mice", "audio", "cables", "desks") for n in range(8)]

# Messages a customer has received once each step of the journey is done:
# confirmation; payment; dispatch (by email and SMS); delivery day;
# delivered; feedback request. When the mail address bounces, each message
# goes by SMS alone.
MESSAGES_AFTER_STEP = {"email": (1, 2, 4, 5, 6, 7), "sms_only": (1, 2, 3, 4, 5, 6)}
# Of those, the mails. An SMS held up by its channel may be overtaken by the
# journey and never sent (superseded), so a driver that must not wait for SMS
# counts these instead; the delivery-day notice goes by SMS alone.
EMAILS_AFTER_STEP = {"email": (1, 2, 3, 3, 4, 5), "sms_only": (0, 0, 0, 0, 0, 0)}

ANY_CHANNEL = "any"
THINK_TIME = 0.3  # seconds between a message and the next event

FLOOR_DELAYS = {  # seconds; the same as the worker's JOURNEY_* settings for the bench
    "payment_reminder_after": 86400, "dispatch_promised_within": 172800, "delivery_deadline": 259200,
    "feedback_delay": 1, "recommendations_delay": 2, "feedback_window": 1,
}


def bench_order(n: int, run: str) -> dict[str, Any]:
    first, second = CATALOGUE[n % len(CATALOGUE)], CATALOGUE[(n * 7 + 3) % len(CATALOGUE)]
    return {
        "order_id": f"b{run}-{n}",
        "placed_at": datetime.now(timezone.utc).isoformat(),
        "currency": "EUR",
        "customer": {
            "customer_id": f"bc{run}-{n}",
            "name": f"Bench Customer {n}",
            "email": f"c{n}.{run}@bench.example",
            "phone": f"+1555{n:07d}",
            "timezone": "Europe/Warsaw",
            # Opted in to marketing mail at checkout, so the customer's
            # journey sends its welcome and the order its recommendations.
            "marketing_consent": {"email": True},
        },
        "items": [
            {"sku": sku, "name": name, "quantity": 1, "unit_price": price, "category": cat}
            for sku, name, price, cat in ([first, second] if first != second else [first])
        ],
        "delivery": {"method": "address", "address": {"line1": "Main St 1", "city": "Warsaw", "postal_code": "00-001", "country": "PL"}},
        "seller": {"seller_id": "bench-seller", "name": "Bench Shop", "sends_delivery_day_notice": True},
    }


@dataclass
class _Progress:
    # Arrival times per channel ("email", "sms"), of each mail under its
    # ledger key, and of every message under ANY_CHANNEL (the floor's
    # notifications name no channel).
    arrivals: dict[str, list[float]] = field(default_factory=lambda: {ANY_CHANNEL: []})
    waiters: list[tuple[str, int, asyncio.Future]] = field(default_factory=list)

    def count(self, stream: str) -> int:
        return len(self.arrivals.get(stream, ()))


class Tracker:
    """Counts what reached the customer side per order, and wakes the driver."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.orders: dict[str, _Progress] = {}
        self.recipients: dict[str, str] = {}
        self.customer_messages = 0

    def register(self, order: dict[str, Any]) -> None:
        oid = order["order_id"]
        self.orders[oid] = _Progress()
        self.recipients[order["customer"]["email"]] = oid
        self.recipients[order["customer"]["phone"]] = oid

    def arrived(self, oid: str, at: float, channel: str | None = None, key: str | None = None) -> None:
        progress = self.orders.get(oid)
        if progress is None:
            return
        progress.arrivals[ANY_CHANNEL].append(at)
        for stream in (channel, key):
            if stream:
                progress.arrivals.setdefault(stream, []).append(at)
        for waiter in list(progress.waiters):
            stream, n, fut = waiter
            if progress.count(stream) >= n and not fut.done():
                fut.set_result(None)
                progress.waiters.remove(waiter)

    def on_provider_request(self, message: AcceptedMessage) -> None:
        """Called on the fake provider's thread. The customer's journey mails
        the same address (its welcome): not a step of the order."""
        if message.key and LedgerKey.parse(message.key).occasion is not None:
            self.customer_messages += 1
            return
        oid = self.recipients.get(message.recipient)
        if oid:
            self.loop.call_soon_threadsafe(self.arrived, oid, message.at, message.channel, message.key)

    def count(self, oid: str, channel: str = ANY_CHANNEL) -> int:
        return self.orders[oid].count(channel)

    def arrival(self, oid: str, index: int, channel: str = ANY_CHANNEL) -> float:
        return self.orders[oid].arrivals[channel][index]

    async def wait_for(self, oid: str, n: int, timeout: float, stream: str = ANY_CHANNEL) -> None:
        """Until `n` messages have come on `stream`: a channel, or a mail's ledger key."""
        progress = self.orders[oid]
        if progress.count(stream) >= n:
            return
        fut = self.loop.create_future()
        progress.waiters.append((stream, n, fut))
        await asyncio.wait_for(fut, timeout)


class FloorNotifications(asyncio.DatagramProtocol):
    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.tracker.arrived(data.decode(), time.monotonic())


@dataclass
class OrderRun:
    order_id: str
    customer_id: str
    latencies: list[float] = field(default_factory=list)
    # When the order was placed ("start") and each event signalled, monotonic.
    signalled_at: dict[str, float] = field(default_factory=dict)
    completed: bool = False
    # The workflow's result (its status view as JSON); None for the floor.
    result: Any = None
    error: str | None = None


class System:
    """How the driver starts and signals orders on one of the two systems."""

    def __init__(self, client: Client, floor: bool) -> None:
        self.client, self.floor = client, floor

    def workflow_id(self, oid: str) -> str:
        return f"floor-{oid}" if self.floor else workflow_id_for(oid)

    def customer_workflow_id(self, customer_id: str) -> str:
        return floor_customer_workflow_id(customer_id) if self.floor else customer_workflow_id(customer_id)

    async def start(self, order: dict[str, Any]) -> None:
        if self.floor:
            await self.client.start_workflow(
                FLOOR_WORKFLOW, {"order_id": order["order_id"], "customer_id": order["customer"]["customer_id"], "delays": FLOOR_DELAYS},
                id=self.workflow_id(order["order_id"]), task_queue=FLOOR_TASK_QUEUE,
            )
        else:
            await place_order(self.client, order)

    async def signal(self, oid: str, event: str, payload: dict[str, Any]) -> None:
        # Plain signals for both, so the driver's own work is the same.
        await self.client.get_workflow_handle(self.workflow_id(oid)).signal(event, payload)

    async def result(self, oid: str) -> Any:
        return await self.client.get_workflow_handle(self.workflow_id(oid)).result()


async def drive_order(
    system: System,
    tracker: Tracker,
    order: dict[str, Any],
    timeout: float = 120,
    patience: float | None = None,
    await_sms: bool = True,
) -> OrderRun:
    """With `patience`, a message that has not come after that many seconds
    does not stop the order (a drill judges messages afterwards, and a send
    left in doubt may never come), nor is it waited for again at later steps;
    the workflow must still complete. Without
    `await_sms`, each step waits for its mails only, and latencies are those
    of the mails."""
    oid = order["order_id"]
    run = OrderRun(oid, order["customer"]["customer_id"])
    bounces = order["customer"]["email"].endswith("@" + BOUNCING_EMAIL_DOMAIN)
    counts, channel = (MESSAGES_AFTER_STEP, ANY_CHANNEL) if await_sms else (EMAILS_AFTER_STEP, "email")
    after_start, after_payment, after_dispatch, after_out_for_delivery, after_delivery, after_feedback_request = (
        counts["sms_only" if bounces else "email"]
    )
    # The customer's date: "today" by UTC is yesterday in Warsaw after 23:00 UTC.
    today = local_date(datetime.now(timezone.utc), order["customer"]["timezone"]).isoformat()

    stage = "start"
    # Messages given up on after `patience`: the counts of later steps do not include them.
    given_up = 0

    async def step(event: str, payload: dict[str, Any], expect: int) -> None:
        nonlocal stage
        # A backend's events come well apart: let the workflow settle into its
        # wait (and its deadline timer) before the next one, as it would.
        await asyncio.sleep(THINK_TIME)
        stage = event
        before = tracker.count(oid, channel)
        sent = run.signalled_at[event] = time.monotonic()
        await system.signal(oid, event, payload)
        # A step may cause no message on this channel (an SMS-only notice).
        if await wait_for_messages(expect) and tracker.count(oid, channel) > before:
            run.latencies.append(tracker.arrival(oid, before, channel) - sent)

    async def wait_for_messages(n: int) -> bool:
        nonlocal given_up
        try:
            await tracker.wait_for(oid, n - given_up, patience or timeout, channel)
        except TimeoutError:
            if patience is None:
                raise
            given_up = n - tracker.count(oid, channel)
            return False
        return True

    async def wait_for_mail(kind: str) -> None:
        try:
            await tracker.wait_for(oid, 1, patience, str(LedgerKey.of_order(oid, kind, "email")))
        except TimeoutError:
            pass  # judged afterwards, as every message given up on

    try:
        run.signalled_at["start"] = time.monotonic()
        await system.start(order)
        await wait_for_messages(after_start)
        await step("payment_received", payment_for(order), after_payment)
        await step("order_dispatched", {"carrier": "DHL", "tracking_number": f"T{oid}", "expected_delivery": today}, after_dispatch)
        await step("out_for_delivery", {"date": today}, after_out_for_delivery)
        await step("order_delivered", {"delivered_at": datetime.now(timezone.utc).isoformat()}, after_delivery)
        stage = "feedback_request"
        if patience and not bounces:
            # That very mail: a message given up on at an earlier step that
            # came since would make up the count, and feedback that comes
            # before the journey asks for it means the journey never asks.
            await wait_for_mail("feedback_request")
        else:
            await wait_for_messages(after_feedback_request)
        stage = "feedback_submitted"
        try:
            await system.signal(oid, "feedback_submitted", {"item_rating": 5, "seller_rating": 5})
        except RPCError as err:
            # The feedback window closed first: the request was left in doubt
            # and never came, or came after `patience`. The order must still
            # have completed; the drill judges the request from its record.
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
        stage = "completion"
        run.result = await asyncio.wait_for(system.result(oid), timeout)
        run.completed = True
    except Exception as err:  # a benchmark reports failures instead of stopping
        run.error = f"{stage}: {type(err).__name__} {err} ({tracker.count(oid)} messages)"
    return run


async def drive(
    system: System,
    tracker: Tracker,
    orders: list[dict[str, Any]],
    concurrency: int,
    timeout: float = 120,
    patience: float | None = None,
    await_sms: bool = True,
    start_over: float | None = None,
) -> tuple[list[OrderRun], float]:
    """All orders with at most `concurrency` in flight; returns runs and
    seconds. With `start_over`, orders are placed evenly over that many
    seconds instead of as fast as the gate lets them in, so that orders are
    on every step of the journey throughout (e.g. a whole provider outage)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(n: int, order: dict[str, Any]) -> OrderRun:
        if start_over:
            await asyncio.sleep(n * start_over / len(orders))
        async with gate:
            return await drive_order(system, tracker, order, timeout, patience, await_sms)

    for order in orders:
        tracker.register(order)
    began = time.monotonic()
    runs = await asyncio.gather(*(one(n, o) for n, o in enumerate(orders)))
    return list(runs), time.monotonic() - began


def new_run_id() -> str:
    return uuid.uuid4().hex[:6]
