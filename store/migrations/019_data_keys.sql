-- Crypto-shredding of Temporal history (codec/data_keys.py): each workflow
-- that holds a customer's data (order-*, customer-*, case-*, resend-*) seals its
-- payloads with its own random AES-256 data key, kept here wrapped
-- (AES-GCM) by a master key (PAYLOAD_ENCRYPTION_KEYS). An erasure destroys
-- the customer's keys once their workflows are closed: the row stays as a
-- tombstone, the wrapped key gone and the workflow id kept only as a salted
-- hash (erasure_hash, migration 018), so nothing can decrypt those
-- histories and no customer id is left in clear.
CREATE TABLE data_keys (
    -- Short and random, named in each payload's metadata: the codec server
    -- gets no workflow id from the Web UI.
    key_id        text PRIMARY KEY,
    -- NULL once shredded.
    workflow_id   text UNIQUE,
    master_key_id text,
    wrapped_key   bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    -- Set when shredded: erasure_hash('workflow', the workflow id).
    workflow_hash text,
    shredded_at   timestamptz,
    CHECK ((shredded_at IS NULL) = (wrapped_key IS NOT NULL AND workflow_id IS NOT NULL AND master_key_id IS NOT NULL)),
    CHECK ((shredded_at IS NULL) = (workflow_hash IS NULL))
);
-- Encoding for a shredded workflow id is refused: found by its hash.
CREATE INDEX data_keys_shredded ON data_keys (workflow_hash) WHERE workflow_hash IS NOT NULL;
-- The re-wrap step finds keys still under an older master key.
CREATE INDEX data_keys_master ON data_keys (master_key_id) WHERE master_key_id IS NOT NULL;
-- The relay's every pass looks for erasures not complete yet (web/erasures.py settle_open).
CREATE INDEX erasures_incomplete ON erasures (requested_at) WHERE completed_at IS NULL;
