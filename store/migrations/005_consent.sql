-- Consent per customer, message class and channel. No row: transactional
-- messages go, marketing does not (consent is never assumed).
CREATE TABLE consent (
    customer_id   text NOT NULL REFERENCES customers,
    message_class text NOT NULL CHECK (message_class IN ('transactional', 'marketing')),
    channel       text NOT NULL CHECK (channel IN ('email', 'sms')),
    granted       boolean NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, message_class, channel)
);

-- Every change of consent: when, how (source) and what.
CREATE TABLE consent_audit (
    id            bigserial PRIMARY KEY,
    customer_id   text NOT NULL,
    message_class text NOT NULL,
    channel       text NOT NULL,
    granted       boolean NOT NULL,
    -- checkout, unsubscribe_link, sms_keyword, provider, operator
    source        text NOT NULL,
    -- e.g. the SMS keyword or the provider's error code; never contact data.
    detail        text,
    at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX consent_audit_customer ON consent_audit (customer_id, at);

-- Addresses and numbers nothing is sent to, whoever the customer: an SMS
-- STOP, a provider's opt-out error, a hard bounce.
CREATE TABLE suppressions (
    channel    text NOT NULL CHECK (channel IN ('email', 'sms')),
    recipient  text NOT NULL,
    reason     text NOT NULL,
    source     text NOT NULL,
    at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, recipient)
);

-- The old per-customer switches become transactional preferences.
INSERT INTO consent (customer_id, message_class, channel, granted)
SELECT customer_id, 'transactional', 'email', false FROM customers WHERE NOT email_opt_in;
INSERT INTO consent (customer_id, message_class, channel, granted)
SELECT customer_id, 'transactional', 'sms', false FROM customers WHERE NOT sms_opt_in;
ALTER TABLE customers DROP COLUMN email_opt_in, DROP COLUMN sms_opt_in;

-- The customer's journey sends messages that belong to no order; the
-- frequency cap counts a customer's marketing messages.
ALTER TABLE message_ledger ALTER COLUMN order_id DROP NOT NULL;
ALTER TABLE message_ledger ADD COLUMN customer_id text, ADD COLUMN message_class text, ADD COLUMN headers jsonb;
CREATE INDEX message_ledger_marketing ON message_ledger (customer_id, created_at) WHERE message_class = 'marketing';
ALTER TABLE outbox ADD COLUMN headers jsonb;
ALTER TABLE message_ledger DROP CONSTRAINT message_ledger_state_check;
ALTER TABLE message_ledger ADD CONSTRAINT message_ledger_state_check
    CHECK (state IN ('pending', 'sending', 'sent', 'failed', 'in_doubt', 'skipped', 'not_permitted'));
