"""`python -m bench`: orders through the whole journey on the real stack, next
to the floor on the same server; throughput, latency, actions per order,
history size and worker memory, written to bench/results/."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import socket
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from temporalio.client import WorkflowHistory

from bench.actions import billable_actions, history_size
from bench.driver import FloorNotifications, OrderRun, System, Tracker, bench_order, drive, new_run_id
from bench.floor import FLOOR_TASK_QUEUE
from bench.stack import Stack, WorkerProcess, cpu_seconds, postgres_transactions, start_stack, wait_for_pollers
from workflows.models import TASK_QUEUE

RESULTS = Path(__file__).parent / "results"
HISTORIES = Path(__file__).resolve().parents[1] / "tests" / "histories"
HISTORY_SAMPLE = 50


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def machine() -> dict[str, Any]:
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem_kb / 2**20, 1), "python": platform.python_version(), "os": platform.platform()}


@dataclass
class Chunk:
    """One stretch of orders on one system, with a fresh worker process."""

    runs: list[OrderRun]
    seconds: float
    cpu_ms: dict[str, float]
    peak_rss_mib: float
    actions: Counter[str]
    customer_actions: Counter[str]
    sampled: int
    events: int
    history_bytes: int
    # PostgreSQL transactions (the floor's: none of its own).
    postgres_transactions: int


async def measure(
    stack: Stack, system: System, worker: WorkerProcess, tracker: Tracker, orders: int, concurrency: int, run: str,
    rate: float | None = None,
) -> Chunk:
    """At most `concurrency` orders in flight, each placed once one ends
    (saturating); with `rate`, placed open-loop at that many orders/s instead."""
    worker.start()
    await wait_for_pollers(stack, FLOOR_TASK_QUEUE if system.floor else TASK_QUEUE, worker=worker)
    worker.start_profiling()
    batch = [bench_order(n, run) for n in range(orders)]
    transactions_before = await postgres_transactions(stack)
    cpu_before = cpu_seconds(stack, worker)
    if rate:
        runs, seconds = await drive(system, tracker, batch, len(batch), start_over=len(batch) / rate)
    else:
        runs, seconds = await drive(system, tracker, batch, concurrency)
    cpu_after = cpu_seconds(stack, worker)
    worker.stop()
    await asyncio.sleep(1.5)  # PostgreSQL's statistics lag by up to a second
    transactions = await postgres_transactions(stack) - transactions_before - 1  # less this reading's own
    actions: Counter[str] = Counter()
    customer_actions: Counter[str] = Counter()
    events = sizes = 0
    sample = [r for r in runs if r.completed][: HISTORY_SAMPLE]
    for r in sample:
        history = await stack.client.get_workflow_handle(system.workflow_id(r.order_id)).fetch_history()
        actions.update(billable_actions(history))
        n_events, n_bytes = history_size(history)
        events, sizes = events + n_events, sizes + n_bytes
        # Every bench customer orders once: their journey's actions are this order's.
        customer = await stack.client.get_workflow_handle(system.customer_workflow_id(r.customer_id)).fetch_history()
        customer_actions.update(billable_actions(customer))
    cpu_ms = {k: 1000 * (cpu_after[k] - cpu_before[k]) for k in cpu_after}
    return Chunk(runs, seconds, cpu_ms, worker.peak_rss_mb, actions, customer_actions, len(sample), events, sizes, transactions)


def actions_per_path() -> dict[str, dict[str, int]]:
    """Billable actions of every recorded journey path. In the benchmark the
    events come seconds apart, so waits that would start a deadline timer in
    production often find their event already there; these do not."""
    paths = {}
    for path in sorted(HISTORIES.glob("*.json")):
        history = WorkflowHistory.from_json(path.stem, path.read_text())
        paths[path.stem] = dict(sorted(billable_actions(history).items()))
    return paths


def summarize(chunks: list[Chunk]) -> dict[str, Any]:
    runs = [r for c in chunks for r in c.runs]
    done = [r for r in runs if r.completed]
    seconds = sum(c.seconds for c in chunks)
    latencies = [x for r in done for x in r.latencies]
    sampled = max(sum(c.sampled for c in chunks), 1)
    actions = sum((c.actions for c in chunks), Counter())
    per_order = {k: round(v / sampled, 2) for k, v in sorted(actions.items())}
    customer_actions = sum((c.customer_actions for c in chunks), Counter())
    customer_per_order = {k: round(v / sampled, 2) for k, v in sorted(customer_actions.items())}
    return {
        "orders": len(runs),
        "completed": len(done),
        "failed": [f"{r.order_id}: {r.error}" for r in runs if not r.completed][:10],
        "seconds": round(seconds, 2),
        "orders_per_second": round(len(done) / seconds, 2),
        "latency_ms": {f"p{q}": round(1000 * percentile(latencies, q), 1) for q in (50, 95, 99)},
        "actions_per_order": round(sum(per_order.values()) + sum(customer_per_order.values()), 2),
        "actions_breakdown": per_order,
        "customer_actions_per_order": round(sum(customer_per_order.values()), 2),
        "customer_actions_breakdown": customer_per_order,
        "history_events_per_order": round(sum(c.events for c in chunks) / sampled, 1),
        "history_bytes_per_order": round(sum(c.history_bytes for c in chunks) / sampled),
        "worker_peak_rss_mib": round(max(c.peak_rss_mib for c in chunks), 1),
        "postgres_transactions_per_order": round(sum(c.postgres_transactions for c in chunks) / max(len(done), 1), 1),
        "cpu_ms_per_order": {k: round(sum(c.cpu_ms[k] for c in chunks) / max(len(done), 1), 1) for k in chunks[0].cpu_ms},
    }


# Floor, ours, ours, floor: the server's store grows as the run goes on, and
# this order gives both sides the same share of early and late.
SCHEDULE = ("floor", "ours", "ours", "floor")


async def run_benchmark(
    orders: int, concurrency: int, only: str | None = None, profile: Path | None = None, rate: float | None = None
) -> dict[str, Any]:
    """`profile`: py-spy flame graphs of each of our workers into that folder.
    `rate`: our side alone, placed open-loop at that many orders/s. A run of
    both sides ends with one more of ours at half the orders/s they reached
    (signal-to-send latency off saturation)."""
    stack = await start_stack()
    chunks: dict[str, list[Chunk]] = {"floor": [], "ours": [], "half_rate": []}
    half_rate = None
    try:
        tracker = Tracker()
        stack.fakes.on_accept = tracker.on_provider_request
        notify_addr = str(stack.state_dir / "floor.sock")
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: FloorNotifications(tracker), local_addr=notify_addr, family=socket.AF_UNIX
        )
        schedule = ["ours"] if rate else [side for side in SCHEDULE if only in (None, side)]
        share = orders // len(schedule)
        for n, side in enumerate(schedule):
            floor = side == "floor"
            print(f"{side}: {share} orders, " + (f"{rate:g}/s" if rate else f"{concurrency} in flight") + " ...", flush=True)
            worker = stack.floor_worker(notify_addr) if floor else stack.our_worker()
            if profile and not floor:
                worker.profile_into(profile, f"worker-{n + 1}")
            chunk = await measure(
                stack, System(stack.client, floor=floor), worker, tracker, share, concurrency, ("f" if floor else "o") + new_run_id(), rate,
            )
            chunks[side].append(chunk)
            print(f"  {len([r for r in chunk.runs if r.completed])} completed in {chunk.seconds:.1f} s", flush=True)
        if chunks["ours"] and chunks["floor"]:
            half_rate = summarize(chunks["ours"])["orders_per_second"] / 2
            print(f"ours at half that rate: {share} orders, {half_rate:.2f}/s ...", flush=True)
            chunk = await measure(stack, System(stack.client, floor=False), stack.our_worker(), tracker, share, concurrency, "h" + new_run_id(), half_rate)
            chunks["half_rate"].append(chunk)
            print(f"  {len([r for r in chunk.runs if r.completed])} completed in {chunk.seconds:.1f} s", flush=True)
        transport.close()
    finally:
        await stack.shutdown()
    ours = summarize(chunks["ours"]) if chunks["ours"] else None
    floor = summarize(chunks["floor"]) if chunks["floor"] else None
    if chunks["half_rate"]:
        ours["half_rate"] = {"orders_per_second_placed": round(half_rate, 2), **summarize(chunks["half_rate"])}
    if ours:
        ours["duplicate_messages"] = len(stack.fakes.duplicates())
        ours["provider_requests"] = sum(stack.fakes.answered.values())
        ours["customer_journey_messages"] = tracker.customer_messages
    return {
        "machine": machine(),
        "orders": orders,
        "concurrency": concurrency,
        "schedule": schedule,
        "actions_per_path": actions_per_path(),
        "efficiency_ratio": round(ours["orders_per_second"] / floor["orders_per_second"], 3) if ours and floor else None,
        "order_lifecycle": ours,
        "floor": floor,
    }


def chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ours, floor = result["order_lifecycle"], result["floor"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    bars = left.bar(["floor", "order lifecycle"], [floor["orders_per_second"], ours["orders_per_second"]], color=["#999999", "#2b6cb0"])
    left.bar_label(bars, fmt="%.1f")
    left.set_title(f"Completed orders/s (ratio {result['efficiency_ratio']:.2f})")
    qs = ["p50", "p95", "p99"]
    x = range(len(qs))
    right.bar([i - 0.2 for i in x], [floor["latency_ms"][q] for q in qs], width=0.4, label="floor", color="#999999")
    right.bar([i + 0.2 for i in x], [ours["latency_ms"][q] for q in qs], width=0.4, label="order lifecycle", color="#2b6cb0")
    right.set_xticks(list(x), qs)
    right.set_ylabel("ms")
    right.set_title("Signal to provider request")
    right.legend()
    m = result["machine"]
    fig.suptitle(f"{result['orders']} orders, {result['concurrency']} in flight · {m['cpus']} CPUs, {m['memory_gib']} GiB")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def report(result: dict[str, Any]) -> str:
    ours, floor = result["order_lifecycle"], result["floor"]
    lines = [
        f"machine: {result['machine']['cpus']} CPUs ({result['machine']['cpu']}), {result['machine']['memory_gib']} GiB, Python {result['machine']['python']}",
        f"orders: {result['orders']}, {result['concurrency']} in flight",
        f"{'':24}{'order lifecycle':>18}{'floor':>12}",
        f"{'completed':24}{ours['completed']:>18}{floor['completed']:>12}",
        f"{'orders/s':24}{ours['orders_per_second']:>18}{floor['orders_per_second']:>12}",
    ]
    for q in ("p50", "p95", "p99"):
        lines.append(f"{'latency ' + q + ' (ms)':24}{ours['latency_ms'][q]:>18}{floor['latency_ms'][q]:>12}")
    lines += [
        f"{'actions per order':24}{ours['actions_per_order']:>18}{floor['actions_per_order']:>12}",
        f"{'  of which customer':24}{ours['customer_actions_per_order']:>18}{floor['customer_actions_per_order']:>12}",
        f"{'history events/order':24}{ours['history_events_per_order']:>18}{floor['history_events_per_order']:>12}",
        f"{'history bytes/order':24}{ours['history_bytes_per_order']:>18}{floor['history_bytes_per_order']:>12}",
        f"{'postgres xacts/order':24}{ours['postgres_transactions_per_order']:>18}{floor['postgres_transactions_per_order']:>12}",
        f"{'worker peak RSS (MiB)':24}{ours['worker_peak_rss_mib']:>18}{floor['worker_peak_rss_mib']:>12}",
    ]
    for part in ours["cpu_ms_per_order"]:
        lines.append(f"{'cpu ms/order ' + part[:11]:24}{ours['cpu_ms_per_order'][part]:>18}{floor['cpu_ms_per_order'][part]:>12}")
    lines += [
        f"efficiency ratio (orders/s vs floor): {result['efficiency_ratio']}",
        f"actions breakdown: order {ours['actions_breakdown']}, customer {ours['customer_actions_breakdown']}",
        f"customer journey messages at the provider: {ours['customer_journey_messages']}",
        f"duplicate messages at the provider: {ours['duplicate_messages']}",
        "actions per journey path, from the recorded histories in tests/histories (days apart, as in production):",
    ]
    for name, counts in result["actions_per_path"].items():
        lines.append(f"  {name:18}{sum(counts.values()):>4}  {counts}")
    lines.insert(lines.index(f"efficiency ratio (orders/s vs floor): {result['efficiency_ratio']}") + 1, half_rate_line(ours))
    return "\n".join(lines)


def half_rate_line(ours: dict[str, Any]) -> str:
    half = ours.get("half_rate")
    if not half:
        return "at half the saturating rate: not measured"
    latency, cpu = half["latency_ms"], half["cpu_ms_per_order"]
    return (
        f"at half the saturating rate ({half['orders_per_second_placed']} orders/s placed, {half['completed']} completed): "
        f"signal to provider request p50 {latency['p50']} ms, p95 {latency['p95']} ms, p99 {latency['p99']} ms; "
        f"cpu ms/order worker {cpu['worker']}, temporal server {cpu['temporal_server']}, postgres {cpu['postgres']}"
    )


def main(orders: int, concurrency: int, only: str | None = None, profile: Path | None = None, rate: float | None = None) -> None:
    if profile:
        profile.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(run_benchmark(orders, concurrency, only, profile, rate))
    if only or rate:
        side = result["order_lifecycle" if only != "floor" else "floor"]
        print(json.dumps(side))
        if side is result["order_lifecycle"]:
            print(half_rate_line(side) if not rate else f"at {rate:g} orders/s placed: signal to provider request {side['latency_ms']}, cpu ms/order {side['cpu_ms_per_order']}")
        print_profile(profile, side)
        return  # a one-sided run is for profiling; it makes no comparison
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    chart(result, RESULTS / "throughput.png")
    print(report(result))
    print_profile(profile, result["order_lifecycle"])
    print(f"written: {RESULTS / 'throughput.json'}, {RESULTS / 'throughput.png'}")


def print_profile(profile: Path | None, ours: dict[str, Any] | None) -> None:
    if profile and ours:
        from bench.profile import breakdown

        print(breakdown(sorted(profile.glob("worker-*.txt")), ours["cpu_ms_per_order"]["worker"], ours["completed"]))
