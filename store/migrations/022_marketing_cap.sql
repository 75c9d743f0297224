-- The marketing cap in one round trip (activities/messaging.py
-- REGISTER_WITHIN_THE_CAP). Concurrent marketing sends for one customer take
-- this lock in turn, held until the calling statement's transaction ends, and
-- each then counts what the others registered: being VOLATILE, the function
-- reads with a snapshot taken after the lock, not the one the calling
-- statement took when it began. `registered`: the message's own row was
-- registered meanwhile by another attempt (not deferred then, but handled as
-- the existing row it is).
CREATE FUNCTION marketing_slots_taken(customer text, window_seconds float8, message_key text,
                                      OUT slots timestamptz[], OUT registered boolean)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('marketing:' || customer));
    -- The customer's marketing messages holding a slot of the cap, oldest first.
    slots := ARRAY(
        SELECT created_at FROM message_ledger
        WHERE customer_id = customer AND message_class = 'marketing' AND key <> message_key
          AND created_at > now() - window_seconds * interval '1 second'
          AND state IN ('pending', 'sending', 'sent', 'in_doubt')
        ORDER BY created_at
    );
    registered := EXISTS (SELECT 1 FROM message_ledger WHERE key = message_key AND state <> 'not_permitted');
END $$;
