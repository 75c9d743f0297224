"""Recommendations from the order history."""

from __future__ import annotations

import asyncpg

# Products most often bought together with the basket, then best sellers in
# the basket's categories; never anything this customer has already bought,
# and cancelled orders do not count.
RECOMMENDATIONS_SQL = """
WITH owned AS (
    SELECT DISTINCT oi.sku
    FROM order_items oi JOIN orders o USING (order_id)
    WHERE o.customer_id = $1
),
together AS (
    SELECT other.sku, min(other.name) AS name, min(other.category) AS category,
           count(DISTINCT other.order_id) AS score, 0 AS tier
    FROM order_items mine
    JOIN order_items other ON other.order_id = mine.order_id AND other.sku <> mine.sku
    JOIN orders o ON o.order_id = other.order_id AND o.status <> 'cancelled'
    WHERE mine.sku = ANY($2::text[])
      AND other.sku NOT IN (SELECT sku FROM owned)
    GROUP BY other.sku
),
best_sellers AS (
    SELECT oi.sku, min(oi.name) AS name, min(oi.category) AS category,
           sum(oi.quantity) AS score, 1 AS tier
    FROM order_items oi
    JOIN orders o ON o.order_id = oi.order_id AND o.status <> 'cancelled'
    WHERE oi.category = ANY($3::text[])
      AND oi.sku NOT IN (SELECT sku FROM owned)
    GROUP BY oi.sku
)
SELECT sku, name, category
FROM (SELECT * FROM together UNION ALL SELECT * FROM best_sellers) ranked
ORDER BY tier, score DESC, sku
-- A sku can rank in both tiers, so twice the limit always holds enough.
LIMIT $4 * 2
"""


async def recommend(
    conn: asyncpg.Connection | asyncpg.Pool, customer_id: str, skus: list[str], categories: list[str], limit: int = 4
) -> list[dict[str, str]]:
    rows = await conn.fetch(RECOMMENDATIONS_SQL, customer_id, skus, categories, limit)
    picks: dict[str, dict[str, str]] = {}
    for row in rows:
        picks.setdefault(row["sku"], dict(row))
    return list(picks.values())[:limit]
