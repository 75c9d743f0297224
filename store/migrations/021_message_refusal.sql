-- The consent rule, in one home (store/consent.py refusal() calls it; the
-- statement that registers a new transactional message reads it as it
-- registers, activities/messaging.py): why a message of `of_class` may not
-- go to `to_recipient` on `on_channel` now, or NULL when it may. The
-- customer forgotten first; then a suppressed address or number (an erased
-- customer's suppression is kept as a salted hash, store/erasure.py); then
-- consent: no row means transactional messages go and marketing does not.
-- PL/pgSQL so that each connection plans it once.
CREATE FUNCTION message_refusal(for_customer text, of_class text, on_channel text, to_recipient text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
        SELECT CASE
            WHEN erased THEN 'customer erased'
            WHEN suppressed IS NOT NULL THEN on_channel || ' recipient suppressed: ' || suppressed
            WHEN of_class = 'marketing' AND granted IS NOT TRUE THEN 'no marketing consent on ' || on_channel
            WHEN of_class = 'transactional' AND granted IS FALSE THEN 'customer prefers no ' || on_channel || ' for order messages'
        END
        FROM (
            SELECT (SELECT erased_at IS NOT NULL FROM customers WHERE customer_id = for_customer) AS erased,
                   (SELECT reason FROM suppressions
                    WHERE channel = on_channel AND recipient IN (to_recipient, erasure_hash(on_channel, to_recipient))
                    LIMIT 1) AS suppressed,
                   (SELECT consent.granted FROM consent
                    WHERE customer_id = for_customer AND message_class = of_class AND channel = on_channel) AS granted
        ) AS permission
    );
END
$$;
