-- The reports whose order has not heard of them yet (Temporal was away, or
-- the HTTP service stopped between recording and signalling): the HTTP
-- service delivers them, oldest first, and sweeps for them every minute, so
-- the index is nearly always empty.
CREATE INDEX provider_events_owed ON provider_events (received_at) WHERE signal IS NOT NULL AND signalled_at IS NULL;

-- A report of a message not delivered that came when its order's workflow
-- was already over: nothing took it up, so `orders attention` lists it.
ALTER TABLE provider_events ADD COLUMN workflow_ended boolean NOT NULL DEFAULT false;
CREATE INDEX provider_events_unheard ON provider_events (received_at) WHERE workflow_ended;

-- Which signal is owed: message_undelivered (a report of a message not
-- delivered) or message_settled (a mail left in doubt for good, that the
-- provider has since reported on). Rows of 007 owe the first.
ALTER TABLE provider_events ADD COLUMN signal_name text;
UPDATE provider_events SET signal_name = 'message_undelivered' WHERE signal IS NOT NULL;
