-- Twilio posts each status callback once: an SMS whose final status never
-- came (a 5xx, a restart, a proxy) is looked up in Twilio by the HTTP
-- service (web/sms_statuses.py). When next (NULL: TWILIO_STATUS_LOOKUP_AFTER
-- after it was sent; 'infinity': never again), and how often it was; a
-- look-up claims its row by moving status_lookup_at past its lease.
ALTER TABLE message_ledger
    ADD COLUMN status_lookup_at timestamptz,
    ADD COLUMN status_lookups integer NOT NULL DEFAULT 0;
CREATE INDEX message_ledger_sms_without_status ON message_ledger (sent_at)
    WHERE provider = 'twilio' AND state = 'sent' AND delivery IS NULL;

-- A report whose ledger key matches no row (a status callback whose key a
-- proxy re-encoded) is matched by the provider's id of the message.
CREATE INDEX message_ledger_provider_message_id ON message_ledger (provider_message_id)
    WHERE provider_message_id IS NOT NULL;

-- provider_events.event 'unreadable': an event of a shape we could not read,
-- kept (detail: what was wrong, by field name) so that a repeat is recorded once.

-- An unsubscribe link or an SMS STOP applies to every customer at the
-- address or number.
CREATE INDEX customers_email ON customers (email);
CREATE INDEX customers_phone ON customers (phone);
