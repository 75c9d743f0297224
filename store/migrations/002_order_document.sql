-- The order as the backend sent it, so a send carries only the order id
-- through Temporal instead of the whole order on every activity.
ALTER TABLE orders ADD COLUMN document jsonb;
