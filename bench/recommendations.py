"""`python -m bench recommendations`: the recommendations query at a million
orders. Generates a shop's history in a fresh embedded PostgreSQL (skewed
product popularity, some cancellations), then times the query the worker runs
for customers drawn from that history, next to the same answer computed by
aggregating the order items on every request (the query this one replaced)."""

from __future__ import annotations

import asyncio
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from bench.throughput import RESULTS, machine, percentile
from starter.embedded import start_postgres
from store.database import migrate
from store.recommendations import RECOMMENDATIONS_SQL, rebuild_rollups

# What the worker ran before the rollups: everything aggregated per request.
AGGREGATE_ON_READ_SQL = """
WITH owned AS (
    SELECT DISTINCT oi.sku FROM order_items oi JOIN orders o USING (order_id) WHERE o.customer_id = $1
),
together AS (
    SELECT other.sku, count(DISTINCT other.order_id) AS score, 0 AS tier
    FROM order_items mine
    JOIN order_items other ON other.order_id = mine.order_id AND other.sku <> mine.sku
    JOIN orders o ON o.order_id = other.order_id AND o.status <> 'cancelled'
    WHERE mine.sku = ANY($2::text[]) AND other.sku NOT IN (SELECT sku FROM owned)
    GROUP BY other.sku
),
best_sellers AS (
    SELECT oi.sku, sum(oi.quantity) AS score, 1 AS tier
    FROM order_items oi JOIN orders o ON o.order_id = oi.order_id AND o.status <> 'cancelled'
    WHERE oi.category = ANY($3::text[]) AND oi.sku NOT IN (SELECT sku FROM owned)
    GROUP BY oi.sku
)
SELECT sku FROM (SELECT * FROM together UNION ALL SELECT * FROM best_sellers) r ORDER BY tier, score DESC, sku LIMIT $4 * 2
"""

GENERATE = """
INSERT INTO customers (customer_id, name, email, timezone)
SELECT 'c' || n, 'Customer ' || n, 'c' || n || '@example.com', 'Europe/Warsaw' FROM generate_series(1, $1) n;

INSERT INTO orders (order_id, customer_id, seller_id, seller_name, placed_at, currency, total, delivery_method, status)
SELECT 'o' || n, 'c' || (1 + (hashint4(n) & 2147483647) % $1), 's1', 'Shop', now() - (n % 365) * interval '1 day',
       'EUR', 10, 'address', CASE WHEN n % 20 = 0 THEN 'cancelled' ELSE 'open' END
FROM generate_series(1, $2) n;

-- One to three lines per order; popularity is skewed (a few products sell a lot).
INSERT INTO order_items (order_id, line_no, sku, name, category, quantity, unit_price)
SELECT 'o' || n, line, 'sku' || p, 'Product ' || p, 'cat' || (p % $4), 1 + line % 2, 9.99
FROM generate_series(1, $2) n
CROSS JOIN LATERAL generate_series(1, 1 + (hashint4(n * 7) & 2147483647) % 3) line
CROSS JOIN LATERAL (SELECT floor($3 * power(((hashint4(n * 31 + line) & 2147483647) / 2147483647.0), 3))::int AS p) pick
ON CONFLICT DO NOTHING;
"""


async def generate(conn: asyncpg.Connection, orders: int, products: int, categories: int) -> None:
    customers = orders // 4
    statements = [s for s in GENERATE.split(";\n") if s.strip()]
    await conn.execute(statements[0].replace("$1", str(customers)))
    await conn.execute(statements[1].replace("$1", str(customers)).replace("$2", str(orders)))
    await conn.execute(
        statements[2].replace("$2", str(orders)).replace("$3", str(products)).replace("$4", str(categories))
    )
    await rebuild_rollups(conn)
    await conn.execute("VACUUM ANALYZE")


async def time_queries(conn: asyncpg.Connection, sql: str, samples: list[tuple[str, list[str], list[str]]]) -> dict[str, float]:
    timings = []
    for customer, skus, categories in samples:
        began = time.perf_counter()
        await conn.fetch(sql, customer, skus, categories, 4)
        timings.append(1000 * (time.perf_counter() - began))
    return {f"p{q}": round(percentile(timings, q), 2) for q in (50, 95, 99)} | {"max": round(max(timings), 2)}


async def run(orders: int, queries: int, baseline_queries: int) -> dict[str, Any]:
    state = Path(tempfile.mkdtemp(prefix="olr-"))
    url = start_postgres(state / "pg")
    await migrate(url)
    conn = await asyncpg.connect(url)
    try:
        began = time.monotonic()
        await generate(conn, orders, products=20_000, categories=200)
        generated_s = time.monotonic() - began
        counts = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM orders) AS orders, (SELECT count(*) FROM order_items) AS items, "
            "(SELECT count(*) FROM bought_together) AS pairs"
        )
        rng = random.Random(1)
        samples = []
        for _ in range(queries):
            oid = f"o{rng.randint(1, orders)}"
            row = await conn.fetchrow(
                "SELECT o.customer_id, array_agg(i.sku) AS skus, array_agg(DISTINCT i.category) AS categories "
                "FROM orders o JOIN order_items i USING (order_id) WHERE o.order_id = $1 GROUP BY o.customer_id",
                oid,
            )
            samples.append((row["customer_id"], row["skus"], row["categories"]))
        await time_queries(conn, RECOMMENDATIONS_SQL, samples[:50])  # warm the cache
        result = {
            "machine": machine(),
            "orders": counts["orders"],
            "order_items": counts["items"],
            "bought_together_rows": counts["pairs"],
            "generate_seconds": round(generated_s, 1),
            "queries": queries,
            "rollup_query_ms": await time_queries(conn, RECOMMENDATIONS_SQL, samples),
            "aggregate_on_read_ms": await time_queries(conn, AGGREGATE_ON_READ_SQL, samples[:baseline_queries]),
            "aggregate_on_read_queries": baseline_queries,
        }
    finally:
        await conn.close()
    return result


def main(orders: int, queries: int) -> None:
    result = asyncio.run(run(orders, queries, baseline_queries=min(queries, 100)))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "recommendations.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
