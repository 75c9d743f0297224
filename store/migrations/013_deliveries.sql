-- When each order was delivered (the carrier's delivered_at), written by the
-- order's workflow when the order is delivered, so a customer's workflow
-- started from PostgreSQL counts the deliveries that make a customer loyal.
ALTER TABLE orders ADD COLUMN delivered_at timestamptz;

-- Orders delivered before this column: their delivery confirmation, handed to
-- its channel when the delivery came in, is the record of it.
UPDATE orders o SET delivered_at = confirmed.at
FROM (
    SELECT order_id, min(created_at) AS at FROM message_ledger
    WHERE kind = 'delivery_confirmation' AND order_id IS NOT NULL GROUP BY order_id
) confirmed
WHERE confirmed.order_id = o.order_id AND o.delivered_at IS NULL;
