"""`python -m bench chaos`: orders in flight while things break. Each drill
drives real orders through the whole journey and then checks, at the fake
provider and in the ledger, that every order completed, no message was lost
and none was sent twice.

Drills: kill-worker (SIGKILL, restart, several times), provider-faults (30 %
429/5xx, some requests answered only after the client gave up, permanent
refusals), postgres-outage (stopped for 30 s), temporal-restart (dev server
restarted on its database file).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RetryConfig

from bench.driver import OrderRun, System, Tracker, bench_order, drive, new_run_id
from bench.stack import Stack, start_stack, wait_for_pollers
from tests.fake_providers import BOUNCING_EMAIL_DOMAIN, FakeProviders

DRILLS = ("kill-worker", "provider-faults", "postgres-outage", "temporal-restart")

RIDE_OUT_OUTAGES = RetryConfig(max_interval_millis=2000, max_elapsed_time_millis=120_000, max_retries=100)


@dataclass
class DrillReport:
    drill: str
    orders: int
    completed: int = 0
    seconds: float = 0.0
    messages_expected: int = 0
    messages_delivered: int = 0
    # Expected but never delivered, with nothing flagged: must be zero.
    lost: int = 0
    duplicates: int = 0
    # Sends a crash or a timeout left unresolved (SendGrid cannot be asked):
    # flagged for an operator, never sent twice. Some reached the customer.
    in_doubt: int = 0
    in_doubt_delivered: int = 0
    in_doubt_not_delivered: int = 0
    failed_permanently: int = 0
    fell_back_to_other_channel: int = 0
    provider_answers: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.completed == self.orders and self.lost == 0 and self.duplicates == 0


async def audit(stack: Stack, report: DrillReport, runs: list[OrderRun], orders: list[dict[str, Any]]) -> None:
    """Compare the ledger with what the fake provider accepted."""
    report.completed = sum(r.completed for r in runs)
    report.errors = [f"{r.order_id}: {r.error}" for r in runs if not r.completed][:10]
    delivered = Counter(m.identity for m in stack.fakes.accepted)
    report.duplicates = sum(n - 1 for n in delivered.values() if n > 1)
    keys_delivered = {m.key for m in stack.fakes.accepted if m.key}
    sms_delivered = Counter(m.recipient for m in stack.fakes.accepted if m.channel == "sms")
    conn = await asyncpg.connect(stack.database_url)
    try:
        rows = await conn.fetch(
            "SELECT key, order_id, channel, recipient, state FROM message_ledger WHERE order_id = ANY($1::text[])",
            [o["order_id"] for o in orders],
        )
    finally:
        await conn.close()
    states = Counter(r["state"] for r in rows)
    report.in_doubt = states["in_doubt"]
    report.failed_permanently = states["failed"]
    sms_expected: Counter[str] = Counter()
    for row in rows:
        if row["state"] in ("failed", "skipped"):
            continue
        report.messages_expected += 1
        if row["channel"] == "email":
            missing = row["key"] not in keys_delivered
            if row["state"] == "in_doubt":
                report.in_doubt_not_delivered += missing
                report.in_doubt_delivered += not missing
            else:
                report.lost += missing
        else:
            sms_expected[row["recipient"]] += 1
    for phone, n in sms_expected.items():
        report.lost += max(0, n - sms_delivered[phone])
    report.messages_delivered = sum(delivered.values())
    failed_keys = {r["key"].rsplit(":", 1)[0] for r in rows if r["state"] == "failed"}
    report.fell_back_to_other_channel = sum(
        1 for r in rows if r["state"] == "sent" and r["key"].rsplit(":", 1)[0] in failed_keys
    )
    report.provider_answers = {str(k): v for k, v in sorted(stack.fakes.answered.items())}


async def run_drill(drill: str, orders: int, concurrency: int) -> DrillReport:
    fakes = FakeProviders(keep_requests=False)
    provider_timeout = 5.0
    if drill == "provider-faults":
        provider_timeout = 1.0
        fakes.fault_rate, fakes.hang_rate, fakes.hang_seconds = 0.3, 0.03, provider_timeout + 1.5
    stack = await start_stack(persistent_temporal=drill == "temporal-restart", fakes=fakes)
    report = DrillReport(drill, orders)
    try:
        # Its own client, so it outlives a restart of the dev server. Like a
        # shop's backend, it keeps retrying calls (waiting on a result, a
        # signal) through an outage longer than the SDK's default 10 s.
        client = await Client.connect(
            stack.temporal_address, data_converter=pydantic_data_converter, retry_config=RIDE_OUT_OUTAGES
        )
        worker = stack.our_worker(provider_timeout=provider_timeout)
        worker.start()
        await wait_for_pollers(stack)
        tracker = Tracker()
        stack.fakes.on_accept = tracker.on_provider_request
        run = new_run_id()
        batch = [bench_order(n, run) for n in range(orders)]
        if drill == "provider-faults":
            for order in batch[::10]:  # refused for good: the SMS carries what the mail could not
                order["customer"]["email"] = f"{order['order_id']}@{BOUNCING_EMAIL_DOMAIN}"
        began = time.monotonic()
        driving = asyncio.create_task(drive(System(client, floor=False), tracker, batch, concurrency, timeout=600, patience=30))
        await break_things(drill, stack, worker, report, driving)
        runs, _ = await driving
        report.seconds = round(time.monotonic() - began, 1)
        await audit(stack, report, runs, batch)
    finally:
        await stack.shutdown()
    return report


async def break_things(drill: str, stack: Stack, worker, report: DrillReport, driving: asyncio.Task) -> None:
    if drill == "kill-worker":
        for n in range(3):
            await asyncio.sleep(6)
            if driving.done():
                break
            worker.kill()
            report.notes.append(f"SIGKILL {n + 1} at {time.strftime('%X')}")
            await asyncio.sleep(1)
            worker.start()
    elif drill == "postgres-outage":
        await asyncio.sleep(5)
        stack.stop_postgres()
        report.notes.append("PostgreSQL stopped for 30 s")
        await asyncio.sleep(30)
        stack.start_postgres_again()
    elif drill == "temporal-restart":
        await asyncio.sleep(6)
        await stack.restart_temporal(down_seconds=5)
        report.notes.append("Temporal dev server down for 5 s, restarted on its database file")


def main(drills: list[str], orders: int, concurrency: int) -> bool:
    ok = True
    for drill in drills:
        print(f"{drill}: {orders} orders, {concurrency} in flight ...", flush=True)
        report = asyncio.run(run_drill(drill, orders, concurrency))
        summary = {k: v for k, v in report.__dict__.items()}
        summary["passed"] = report.passed
        print(json.dumps(summary), flush=True)
        ok &= report.passed
    return ok
