-- The WOCAS report and lifecycle metrics (reports/). Moments the order's
-- workflow knows and PostgreSQL did not record: written by the workflow
-- (NULL for orders before these columns, and until it writes them).
--   paid_at:          when the payment was accepted (the order became paid);
--   dispatched_at:    when the order was dispatched (order_dispatched);
--   pickup_missed_at: when a locker parcel's pickup deadline passed uncollected
--                     (the order is flagged locker_not_collected).
ALTER TABLE orders
    ADD COLUMN paid_at          timestamptz,
    ADD COLUMN dispatched_at    timestamptz,
    ADD COLUMN pickup_missed_at timestamptz;

-- Each report reads one week (and the week before) of these by time.
CREATE INDEX orders_placed ON orders (placed_at);
CREATE INDEX orders_dispatched ON orders (dispatched_at) WHERE dispatched_at IS NOT NULL;
CREATE INDEX orders_delivered ON orders (delivered_at) WHERE delivered_at IS NOT NULL;
CREATE INDEX orders_pickup_missed ON orders (pickup_missed_at) WHERE pickup_missed_at IS NOT NULL;
CREATE INDEX feedback_received ON feedback (received_at);
CREATE INDEX message_votes_voted ON message_votes (voted_at);
CREATE INDEX message_ledger_sent ON message_ledger (sent_at) WHERE state = 'sent';
-- Late dispatch, late delivery, lost parcels: the touchpoints of those deadlines.
CREATE INDEX message_ledger_breaches ON message_ledger (created_at, kind)
    WHERE kind IN ('dispatch_delayed', 'delivery_delayed', 'parcel_lost');
