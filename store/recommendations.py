"""Recommendations from the order history."""

from __future__ import annotations

import asyncpg

# Products most often bought together with the basket, then best sellers in
# the basket's categories; never anything this customer has already bought.
# Both read the rollups kept by record_order and cancel_order, so cancelled
# orders do not count and the cost does not grow with the order history.
RECOMMENDATIONS_SQL = """
WITH owned AS (
    SELECT DISTINCT oi.sku
    FROM orders o JOIN order_items oi USING (order_id)
    WHERE o.customer_id = $1
),
together AS (
    -- Each basket product's top partners straight from the index, so a best
    -- seller bought with thousands of products costs no more than any other.
    SELECT top.other_sku AS sku, sum(top.orders) AS score, 0 AS tier
    FROM unnest($2::text[]) AS basket(sku)
    CROSS JOIN LATERAL (
        SELECT t.other_sku, t.orders FROM bought_together t
        WHERE t.sku = basket.sku AND t.orders > 0 AND t.other_sku NOT IN (SELECT sku FROM owned)
        ORDER BY t.orders DESC, t.other_sku
        LIMIT $4
    ) top
    GROUP BY top.other_sku
    ORDER BY score DESC, top.other_sku
    LIMIT $4
),
best_sellers AS (
    SELECT best.sku, best.units_sold AS score, 1 AS tier
    FROM unnest($3::text[]) AS c(category)
    CROSS JOIN LATERAL (
        SELECT sku, units_sold FROM product_sales
        WHERE category = c.category AND units_sold > 0 AND sku NOT IN (SELECT sku FROM owned)
        ORDER BY units_sold DESC, sku
        LIMIT $4
    ) best
)
SELECT p.sku, p.name, p.category
FROM (SELECT * FROM together UNION ALL SELECT * FROM best_sellers) ranked
JOIN product_sales p USING (sku)
ORDER BY ranked.tier, ranked.score DESC, p.sku
-- A sku can rank in both tiers, so twice the limit always holds enough.
LIMIT $4 * 2
"""


async def rebuild_rollups(conn: asyncpg.Connection) -> None:
    """Recompute the rollups from the orders, e.g. after a bulk import that
    bypassed record_order. Holds table locks while it runs."""
    async with conn.transaction():
        await conn.execute("TRUNCATE product_sales, bought_together")
        await conn.execute(
            """
            INSERT INTO product_sales (sku, name, category, units_sold)
            SELECT DISTINCT ON (oi.sku) oi.sku, oi.name, oi.category,
                   coalesce(sum(oi.quantity) FILTER (WHERE o.status <> 'cancelled') OVER (PARTITION BY oi.sku), 0)
            FROM order_items oi JOIN orders o USING (order_id)
            ORDER BY oi.sku
            """
        )
        await conn.execute(
            """
            INSERT INTO bought_together (sku, other_sku, orders)
            SELECT a.sku, b.sku, count(DISTINCT a.order_id)
            FROM order_items a
            JOIN order_items b ON b.order_id = a.order_id AND b.sku <> a.sku
            JOIN orders o ON o.order_id = a.order_id AND o.status <> 'cancelled'
            GROUP BY a.sku, b.sku
            """
        )


async def recommend(
    conn: asyncpg.Connection | asyncpg.Pool, customer_id: str, skus: list[str], categories: list[str], limit: int = 4
) -> list[dict[str, str]]:
    rows = await conn.fetch(RECOMMENDATIONS_SQL, customer_id, skus, categories, limit)
    picks: dict[str, dict[str, str]] = {}
    for row in rows:
        picks.setdefault(row["sku"], dict(row))
    return list(picks.values())[:limit]
