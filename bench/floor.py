"""The floor: a workflow of the same shape as OrderLifecycle on the happy path
(the same signals, the same number of activities, the same timers, its
messages queued one channel at a time while it waits on) whose
activities do nothing but tell the benchmark driver they ran, and beside it
one of the same shape as a first-time customer's CustomerJourney (started by
signal-with-start from the order's first activity, told of the delivery by
the order, one activity at start, a welcome and a lapse timer). No database,
no templates, no providers, no search attributes: what Temporal itself costs.

Run as a worker: `python -m bench.floor` (TEMPORAL_ADDRESS, BENCH_NOTIFY_ADDR).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from datetime import timedelta
from collections.abc import Sequence
from typing import Any

from temporalio import activity, workflow
from temporalio.common import RawValue, RetryPolicy
from temporalio.worker import Worker

FLOOR_TASK_QUEUE = "bench-floor"
FLOOR_WORKFLOW = "FloorOrder"
FLOOR_CUSTOMER_WORKFLOW = "FloorCustomer"
# The customer journey's default lapse period.
LAPSE_AFTER = timedelta(days=90)
# The same options as the real sends and database activities.
ACTIVITY_OPTIONS = dict(start_to_close_timeout=timedelta(seconds=60), retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=1)))

# Unix datagrams: unlike UDP, none is dropped when the driver falls behind.
_notify_socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)


@activity.defn(name="floor_step")
async def floor_step(order_id: str, step: str, visible: bool) -> None:
    """Nothing, except a datagram to the driver for steps a customer would see."""
    if visible:
        _notify_socket.sendto(order_id.encode(), os.environ["BENCH_NOTIFY_ADDR"])


def floor_customer_workflow_id(customer_id: str) -> str:
    return f"floor-customer-{customer_id}"


class FloorRecordOrder:
    """The order's first activity: like record_order, it signal-with-starts
    the customer's workflow."""

    def __init__(self, client: Client) -> None:
        self.client = client

    @activity.defn(name="floor_record_order")
    async def record_order(self, customer_id: str) -> None:
        await self.client.start_workflow(
            FLOOR_CUSTOMER_WORKFLOW, customer_id, id=floor_customer_workflow_id(customer_id),
            task_queue=FLOOR_TASK_QUEUE, start_signal="order_news", start_signal_args=["placed"],
        )


@workflow.defn(name=FLOOR_CUSTOMER_WORKFLOW)
class FloorCustomer:
    def __init__(self) -> None:
        self.news: list[str] = []

    @workflow.run
    async def run(self, customer_id: str) -> None:
        step = dict(args=[customer_id, "", False], **ACTIVITY_OPTIONS)
        await workflow.execute_activity(floor_step, **step)  # the starting phase recorded
        await workflow.wait_condition(lambda: "delivered" in self.news)
        lapse = asyncio.create_task(workflow.sleep(LAPSE_AFTER))
        await workflow.execute_activity(floor_step, **step)  # the welcome
        await lapse

    @workflow.signal
    def order_news(self, news: str) -> None:
        self.news.append(news)


@workflow.defn(name=FLOOR_WORKFLOW)
class FloorOrder:
    def __init__(self) -> None:
        self.events: set[str] = set()
        self.lanes: dict[str, asyncio.Task[None] | None] = {"email": None, "sms": None}

    async def _step(self, step: str, visible: bool = True) -> None:
        await workflow.execute_activity(floor_step, args=[self.order_id, step, visible], **ACTIVITY_OPTIONS)

    def _queue(self, step: str, lane: str = "email") -> None:
        """As our message lanes (workflows/lanes.py) do: a channel's messages
        go one at a time, in order, and the workflow goes on meanwhile; so
        its deadlines' timers start when ours do."""
        before = self.lanes[lane]

        async def send() -> None:
            if before is not None:
                await before
            await self._step(step)

        self.lanes[lane] = asyncio.create_task(send())

    @staticmethod
    async def _sleep(duration: timedelta) -> None:
        if duration > timedelta(0):
            await workflow.sleep(duration)

    async def _wait(self, event: str, timeout: timedelta | None) -> None:
        try:
            await workflow.wait_condition(lambda: event in self.events, timeout=timeout)
        except asyncio.TimeoutError:
            pass

    @workflow.run
    async def run(self, order: dict[str, Any]) -> None:
        self.order_id = order["order_id"]
        delays = {k: timedelta(seconds=v) for k, v in order["delays"].items()}
        await workflow.execute_activity("floor_record_order", order["customer_id"], **ACTIVITY_OPTIONS)
        self._queue("order_confirmation")
        await self._wait("payment_received", delays["payment_reminder_after"])
        self._queue("payment_confirmation")
        await self._wait("order_dispatched", delays["dispatch_promised_within"])
        self._queue("dispatch_email")
        self._queue("dispatch_sms", "sms")
        deadline = asyncio.create_task(workflow.sleep(delays["delivery_deadline"]))
        await workflow.wait_condition(lambda: "out_for_delivery" in self.events)
        self._queue("delivery_day", "sms")
        await workflow.wait_condition(lambda: "order_delivered" in self.events)
        deadline.cancel()
        delivered_at = workflow.now()
        customer = workflow.get_external_workflow_handle(floor_customer_workflow_id(order["customer_id"]))
        told_customer = asyncio.create_task(customer.signal("order_news", "delivered"))
        self._queue("delivery_confirmation")
        feedback = asyncio.create_task(self._keep_feedback())
        await self._sleep(delivered_at + delays["feedback_delay"] - workflow.now())
        self._queue("feedback_request")
        asked_at = workflow.now()
        await self._sleep(delivered_at + delays["recommendations_delay"] - workflow.now())
        self._queue("recommendations")
        await self._wait("feedback_submitted", asked_at + delays["feedback_window"] - workflow.now())
        await feedback
        await told_customer
        await asyncio.gather(*(lane for lane in self.lanes.values() if lane is not None))

    async def _keep_feedback(self) -> None:
        await workflow.wait_condition(lambda: "feedback_submitted" in self.events)
        await self._step("store_feedback", visible=False)

    @workflow.signal(dynamic=True)
    def on_event(self, name: str, args: Sequence[RawValue]) -> None:
        self.events.add(name)


async def _main() -> None:
    # Imported here: this module is also loaded by the workflow sandbox, where
    # the worker module's database and provider imports have no place.
    from worker import connect_temporal, worker_tuning

    # Payloads encrypted as the real worker's are, so the floor pays that cost too.
    client = await connect_temporal(os.environ)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # The same worker settings as the real one.
    async with Worker(
        client, task_queue=FLOOR_TASK_QUEUE, workflows=[FloorOrder, FloorCustomer],
        activities=[floor_step, FloorRecordOrder(client).record_order],
        **worker_tuning(),
    ):
        await stop.wait()


if __name__ == "__main__":
    from worker import exit_without_teardown, run_event_loop

    run_event_loop(_main())
    exit_without_teardown(0)
