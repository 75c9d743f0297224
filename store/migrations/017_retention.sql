-- Retention (store/retention.py): what is kept, for how long, removed daily
-- by the retention schedule in small batches.

-- A ledger row outlives its rendering: its key's uniqueness is what keeps a
-- late retry from sending twice. Past RETENTION_LEDGER_RENDERINGS the
-- rendering and the recipient are blanked (NULL) and blanked_at says when;
-- such a row is never sent again (an operator's resend is refused).
ALTER TABLE message_ledger ALTER COLUMN recipient DROP NOT NULL;
ALTER TABLE message_ledger ADD COLUMN blanked_at timestamptz;

-- Each batch takes the oldest rows past the cut-off from these, never
-- scanning the table; rows already removed or blanked leave the partial ones.
CREATE INDEX message_ledger_unblanked ON message_ledger (updated_at)
    WHERE blanked_at IS NULL AND state NOT IN ('pending', 'sending');
-- Rows no longer owed: no signal to deliver, or delivered.
CREATE INDEX provider_events_done ON provider_events (received_at)
    WHERE signal IS NULL OR signalled_at IS NOT NULL;
CREATE INDEX outbox_created ON outbox (created_at);
CREATE INDEX sms_keywords_seen_received ON sms_keywords_seen (received_at);
