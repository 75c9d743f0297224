"""`python -m bench open-orders`: many paid orders waiting for dispatch at
once on one worker. Reports the worker's memory as the open orders grow (the
worker keeps at most its workflow cache in memory; the rest live in Temporal
and are replayed when their next event comes), then dispatches a sample of
the oldest, long evicted, to show they carry on."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timezone
from typing import Any

from bench.driver import System, Tracker, bench_order, new_run_id
from bench.stack import start_stack, wait_for_pollers
from bench.throughput import RESULTS, machine
from starter.demo import payment as payment_for
from workflows.clock import local_date

PAID = 2  # confirmation and payment confirmation


async def open_order(system: System, tracker: Tracker, order: dict[str, Any]) -> None:
    await system.start(order)
    await tracker.wait_for(order["order_id"], 1, 600)
    await system.signal(order["order_id"], "payment_received", payment_for(order))
    await tracker.wait_for(order["order_id"], PAID, 600)


async def run(orders: int, concurrency: int, sample: int) -> dict[str, Any]:
    stack = await start_stack()
    try:
        worker = stack.our_worker()
        worker.start()
        await wait_for_pollers(stack)
        tracker = Tracker()
        stack.fakes.on_accept = tracker.on_provider_request
        system = System(stack.client, floor=False)
        run_id = new_run_id()
        batch = [bench_order(n, run_id) for n in range(orders)]
        for order in batch:
            tracker.register(order)
        gate = asyncio.Semaphore(concurrency)
        opened = 0
        checkpoints: list[dict[str, float]] = []
        began = time.monotonic()

        async def one(order: dict[str, Any]) -> None:
            nonlocal opened
            async with gate:
                await open_order(system, tracker, order)
            opened += 1
            if opened % max(orders // 10, 1) == 0:
                checkpoints.append({"open_orders": opened, "worker_rss_mib": round(worker.rss_mb(), 1), "seconds": round(time.monotonic() - began, 1)})
                print(json.dumps(checkpoints[-1]), flush=True)

        await asyncio.gather(*(one(o) for o in batch))
        await asyncio.sleep(5)
        settled_rss = worker.rss_mb()
        # The oldest orders were evicted from the worker's cache long ago.
        today = local_date(datetime.now(timezone.utc), batch[0]["customer"]["timezone"]).isoformat()
        resumed_began = time.monotonic()
        oldest = batch[:sample]
        for order in oldest:
            await system.signal(order["order_id"], "order_dispatched", {"carrier": "DHL", "tracking_number": "T1", "expected_delivery": today})
        await asyncio.gather(*(tracker.wait_for(o["order_id"], PAID + 2, 300) for o in oldest))
        resumed_s = time.monotonic() - resumed_began
        running = (await stack.client.count_workflows("ExecutionStatus='Running'")).count
        return {
            "machine": machine(),
            "open_orders": orders,
            "running_workflows": running,
            "seconds_to_open": round(time.monotonic() - began, 1),
            "checkpoints": checkpoints,
            "worker_rss_mib_all_open": round(settled_rss, 1),
            "worker_peak_rss_mib": round(worker.sample_peak(), 1),
            "evicted_orders_dispatched": sample,
            "evicted_orders_dispatch_seconds": round(resumed_s, 1),
        }
    finally:
        await stack.shutdown()


def main(orders: int, concurrency: int) -> None:
    result = asyncio.run(run(orders, concurrency, sample=100))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "open_orders.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
