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

from bench.floor import FLOOR_TASK_QUEUE, FLOOR_WORKFLOW
from starter.cli import place_order
from starter.demo import payment as payment_for
from tests.fake_providers import BOUNCING_EMAIL_DOMAIN, AcceptedMessage
from workflows.models import workflow_id_for

# Categories of a small shop; every order buys two products from one or two
# of them, so later orders have something to recommend.
CATALOGUE = [(f"SKU-{c[:3].upper()}-{n}", f"{c.title()} {n}", f"{10 + 7 * n}.90", c) for c in ("keyboards", "mice", "audio", "cables", "desks") for n in range(8)]

# Messages a customer has received once each step of the journey is done:
# confirmation; payment; dispatch (by email and SMS); delivery day;
# delivered; feedback request. When the mail address bounces, each message
# goes by SMS alone.
MESSAGES_AFTER_STEP = {"email": (1, 2, 4, 5, 6, 7), "sms_only": (1, 2, 3, 4, 5, 6)}

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
    arrivals: list[float] = field(default_factory=list)
    waiters: list[tuple[int, asyncio.Future]] = field(default_factory=list)


class Tracker:
    """Counts what reached the customer side per order, and wakes the driver."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.orders: dict[str, _Progress] = {}
        self.recipients: dict[str, str] = {}

    def register(self, order: dict[str, Any]) -> None:
        oid = order["order_id"]
        self.orders[oid] = _Progress()
        self.recipients[order["customer"]["email"]] = oid
        self.recipients[order["customer"]["phone"]] = oid

    def arrived(self, oid: str, at: float) -> None:
        progress = self.orders.get(oid)
        if progress is None:
            return
        progress.arrivals.append(at)
        for n, fut in list(progress.waiters):
            if len(progress.arrivals) >= n and not fut.done():
                fut.set_result(None)
                progress.waiters.remove((n, fut))

    def on_provider_request(self, message: AcceptedMessage) -> None:
        """Called on the fake provider's thread."""
        oid = self.recipients.get(message.recipient)
        if oid:
            self.loop.call_soon_threadsafe(self.arrived, oid, message.at)

    def count(self, oid: str) -> int:
        return len(self.orders[oid].arrivals)

    async def wait_for(self, oid: str, n: int, timeout: float) -> None:
        progress = self.orders[oid]
        if len(progress.arrivals) >= n:
            return
        fut = self.loop.create_future()
        progress.waiters.append((n, fut))
        await asyncio.wait_for(fut, timeout)


class FloorNotifications(asyncio.DatagramProtocol):
    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.tracker.arrived(data.decode(), time.monotonic())


@dataclass
class OrderRun:
    order_id: str
    latencies: list[float] = field(default_factory=list)
    completed: bool = False
    error: str | None = None


class System:
    """How the driver starts and signals orders on one of the two systems."""

    def __init__(self, client: Client, floor: bool) -> None:
        self.client, self.floor = client, floor

    def workflow_id(self, oid: str) -> str:
        return f"floor-{oid}" if self.floor else workflow_id_for(oid)

    async def start(self, order: dict[str, Any]) -> None:
        if self.floor:
            await self.client.start_workflow(
                FLOOR_WORKFLOW, {"order_id": order["order_id"], "delays": FLOOR_DELAYS},
                id=self.workflow_id(order["order_id"]), task_queue=FLOOR_TASK_QUEUE,
            )
        else:
            await place_order(self.client, order)

    async def signal(self, oid: str, event: str, payload: dict[str, Any]) -> None:
        # Plain signals for both, so the driver's own work is the same.
        await self.client.get_workflow_handle(self.workflow_id(oid)).signal(event, payload)

    async def result(self, oid: str) -> None:
        await self.client.get_workflow_handle(self.workflow_id(oid)).result()


async def drive_order(
    system: System, tracker: Tracker, order: dict[str, Any], timeout: float = 120, patience: float | None = None
) -> OrderRun:
    """With `patience`, a message that has not come after that many seconds
    does not stop the order (a drill judges messages afterwards, and a send
    left in doubt may never come); the workflow must still complete."""
    oid = order["order_id"]
    run = OrderRun(oid)
    bounces = order["customer"]["email"].endswith("@" + BOUNCING_EMAIL_DOMAIN)
    after_start, after_payment, after_dispatch, after_out_for_delivery, after_delivery, after_feedback_request = (
        MESSAGES_AFTER_STEP["sms_only" if bounces else "email"]
    )
    today = datetime.now(timezone.utc).date().isoformat()

    stage = "start"

    async def step(event: str, payload: dict[str, Any], expect: int) -> None:
        nonlocal stage
        # A backend's events come well apart: let the workflow settle into its
        # wait (and its deadline timer) before the next one, as it would.
        await asyncio.sleep(THINK_TIME)
        stage = event
        before = tracker.count(oid)
        sent = time.monotonic()
        await system.signal(oid, event, payload)
        if await wait_for_messages(expect):
            run.latencies.append(tracker.orders[oid].arrivals[before] - sent)

    async def wait_for_messages(n: int) -> bool:
        try:
            await tracker.wait_for(oid, n, patience or timeout)
        except TimeoutError:
            if patience is None:
                raise
            return False
        return True

    try:
        await system.start(order)
        await wait_for_messages(after_start)
        await step("payment_received", payment_for(order), after_payment)
        await step("order_dispatched", {"carrier": "DHL", "tracking_number": f"T{oid}", "expected_delivery": today}, after_dispatch)
        await step("out_for_delivery", {"date": today}, after_out_for_delivery)
        await step("order_delivered", {"delivered_at": datetime.now(timezone.utc).isoformat()}, after_delivery)
        stage = "feedback_request"
        await wait_for_messages(after_feedback_request)
        stage = "feedback_submitted"
        try:
            await system.signal(oid, "feedback_submitted", {"item_rating": 5, "seller_rating": 5})
        except RPCError as err:
            # The feedback window closed first: the request was left in doubt
            # and never came, or came after `patience`. The order must still
            # have completed; the drill judges the request from the ledger.
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
        stage = "completion"
        await asyncio.wait_for(system.result(oid), timeout)
        run.completed = True
    except Exception as err:  # a benchmark reports failures instead of stopping
        run.error = f"{stage}: {type(err).__name__} {err} ({tracker.count(oid)} messages)"
    return run


async def drive(
    system: System, tracker: Tracker, orders: list[dict[str, Any]], concurrency: int, timeout: float = 120, patience: float | None = None
) -> tuple[list[OrderRun], float]:
    """All orders with at most `concurrency` in flight; returns runs and seconds."""
    gate = asyncio.Semaphore(concurrency)

    async def one(order: dict[str, Any]) -> OrderRun:
        async with gate:
            return await drive_order(system, tracker, order, timeout, patience)

    for order in orders:
        tracker.register(order)
    began = time.monotonic()
    runs = await asyncio.gather(*(one(o) for o in orders))
    return list(runs), time.monotonic() - began


def new_run_id() -> str:
    return uuid.uuid4().hex[:6]
