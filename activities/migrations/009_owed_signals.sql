-- The reports whose order has not heard of them yet (Temporal was away, or
-- the HTTP service stopped between recording and signalling): the HTTP
-- service delivers them, oldest first, and sweeps for them every minute, so
-- the index is nearly always empty.
CREATE INDEX provider_events_owed ON provider_events (received_at) WHERE signal IS NOT NULL AND signalled_at IS NULL;
