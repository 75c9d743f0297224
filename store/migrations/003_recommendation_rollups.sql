-- Recommendations read small rollups kept up to date as orders are recorded
-- and cancelled, instead of aggregating every order item on each request:
-- at a million orders that aggregation took far longer than the 20 ms budget.
CREATE TABLE product_sales (
    sku         text PRIMARY KEY,
    name        text NOT NULL,
    category    text NOT NULL,
    units_sold  bigint NOT NULL
);
CREATE INDEX product_sales_best_in_category ON product_sales (category, units_sold DESC, sku);

-- One row per ordered pair of products seen in the same (not cancelled) order.
CREATE TABLE bought_together (
    sku         text NOT NULL,
    other_sku   text NOT NULL,
    orders      bigint NOT NULL,
    PRIMARY KEY (sku, other_sku)
);
CREATE INDEX bought_together_top ON bought_together (sku, orders DESC, other_sku);

INSERT INTO product_sales (sku, name, category, units_sold)
SELECT DISTINCT ON (oi.sku) oi.sku, oi.name, oi.category,
       coalesce(sum(oi.quantity) FILTER (WHERE o.status <> 'cancelled') OVER (PARTITION BY oi.sku), 0)
FROM order_items oi JOIN orders o USING (order_id)
ORDER BY oi.sku;

INSERT INTO bought_together (sku, other_sku, orders)
SELECT a.sku, b.sku, count(DISTINCT a.order_id)
FROM order_items a
JOIN order_items b ON b.order_id = a.order_id AND b.sku <> a.sku
JOIN orders o ON o.order_id = a.order_id AND o.status <> 'cancelled'
GROUP BY a.sku, b.sku;
