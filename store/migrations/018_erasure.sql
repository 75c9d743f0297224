-- The right to erasure (store/erasure.py): a customer forgotten on request.

-- When the customer was forgotten; NULL for a customer we may write to.
-- Every send reads it (activities/messaging.py); a new order of the same
-- customer id records new details and clears it.
ALTER TABLE customers ADD COLUMN erased_at timestamptz;

-- One random salt per database, made here and never shown: erased
-- customers' suppressed addresses and numbers, and their ids in the
-- erasure log, are kept only as salted hashes.
CREATE TABLE erasure_salt (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    salt     text NOT NULL
);
INSERT INTO erasure_salt (salt) VALUES (replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''));

-- 'erased:' and the salted SHA-256 of what it hashes, e.g. a channel and a
-- recipient: a suppression kept after its customer was forgotten has this as
-- its recipient, and the send-time check (store/consent.py) tries both forms.
CREATE FUNCTION erasure_hash(kind text, value text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT 'erased:' || encode(sha256(convert_to(salt || ':' || kind || ':' || value, 'UTF8')), 'hex') FROM erasure_salt
$$;

-- The erasure log: no personal data, only what was done, when and by whom.
CREATE TABLE erasures (
    receipt_id    text PRIMARY KEY,
    customer_hash text NOT NULL,
    requested_by  text NOT NULL,
    requested_at  timestamptz NOT NULL DEFAULT now(),
    completed_at  timestamptz,
    -- Rows changed per table, e.g. {"message_ledger": 7, "suppressions": 1}.
    erased        jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX erasures_customer ON erasures (customer_hash, requested_at);
