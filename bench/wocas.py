"""`python -m bench wocas`: the WOCAS report on a year of history. Seeds a
fresh embedded PostgreSQL with `orders seed-history`'s generator, then times
building the report for the last week (all its queries, the lifecycle
metrics among them), the metrics alone, and rendering it (charts included)."""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import asyncpg

from bench.throughput import RESULTS, machine
from reports.metrics import lifecycle_metrics, targets_from_env
from reports.period import Period
from reports.render import write_folder
from reports.seed import seed_history
from reports.wocas import build_report
from starter.embedded import start_postgres
from store.database import migrate

UNTIL = datetime(2026, 3, 2, tzinfo=timezone.utc)


async def timed(runs: int, action) -> dict[str, float]:
    seconds = []
    for _ in range(runs):
        began = time.perf_counter()
        await action()
        seconds.append(time.perf_counter() - began)
    return {"median_s": round(statistics.median(seconds), 3), "max_s": round(max(seconds), 3)}


async def run(orders: int, runs: int) -> dict[str, Any]:
    state = Path(tempfile.mkdtemp(prefix="olw-"))
    url = start_postgres(state / "pg")
    await migrate(url)
    conn = await asyncpg.connect(url)
    try:
        began = time.monotonic()
        counts = await seed_history(conn, orders, seed=1, until=UNTIL)
        seeded_s = time.monotonic() - began
        period, targets = Period.ending(UNTIL), targets_from_env({})
        await build_report(conn, period, targets)  # warm the cache
        report = await build_report(conn, period, targets)
        out = state / "report"
        return {
            "machine": machine(),
            "rows": counts,
            "seed_seconds": round(seeded_s, 1),
            "runs": runs,
            "report_build": await timed(runs, lambda: build_report(conn, period, targets)),
            "metrics_only": await timed(runs, lambda: lifecycle_metrics(conn, period, targets)),
            "render_folder": await timed(1, lambda: asyncio.to_thread(write_folder, report, out)),
            "report_folder": str(out),
        }
    finally:
        await conn.close()


def main(orders: int, runs: int) -> None:
    result = asyncio.run(run(orders, runs))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "wocas.json").write_text(json.dumps({k: v for k, v in result.items() if k != "report_folder"}, indent=2) + "\n")
    print(json.dumps(result, indent=2))
