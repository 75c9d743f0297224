-- What the HTTP service's relay needs to deliver the signals provider
-- reports owe orders (web/signals.py): which signal (message_undelivered, a
-- report of a message not delivered; message_settled, a mail left in doubt
-- for good that the provider has since reported on; rows of 007 owe the
-- first), a claim so that replicas deliver each once and hold no lock while
-- they call Temporal, and whether the order's workflow was over when told,
-- so that `orders attention` lists a report no one took up.
ALTER TABLE provider_events
    ADD COLUMN signal_name text NOT NULL DEFAULT 'message_undelivered',
    ADD COLUMN claimed_until timestamptz,
    ADD COLUMN workflow_ended boolean NOT NULL DEFAULT false;

-- Owed: Temporal was away, or the service stopped between recording and
-- signalling. Swept every minute, oldest first; nearly always empty.
CREATE INDEX provider_events_owed ON provider_events (received_at) WHERE signal IS NOT NULL AND signalled_at IS NULL;
CREATE INDEX provider_events_unheard ON provider_events (received_at) WHERE workflow_ended;
