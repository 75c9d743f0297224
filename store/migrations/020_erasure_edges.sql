-- Erasure's edges (store/erasure.py).

-- A case can end without a resolution: closed, with the reason (its
-- customer erased: workflows/case_handling.py). Closed cases are neither
-- open nor overdue.
ALTER TABLE cases DROP CONSTRAINT cases_status_check;
ALTER TABLE cases ADD CONSTRAINT cases_status_check
    CHECK (status IN ('open', 'acknowledged', 'escalated', 'resolved', 'closed'));
ALTER TABLE cases ADD COLUMN closed_reason text;
DROP INDEX cases_open;
CREATE INDEX cases_open ON cases (status, due_at) WHERE status NOT IN ('resolved', 'closed');

-- The erasure salt moves out of the database (store/erasure_salt.py):
-- ERASURE_SALT, given to each pooled connection's session as the setting
-- orders.erasure_salt, keys every hash, over the hash 018 made with the
-- salt stored here; the start-up that first has it re-hashes the stored 018
-- hashes in place and records a check value of it.
ALTER FUNCTION erasure_hash(text, text) RENAME TO erasure_hash_018;

CREATE FUNCTION erasure_keyed(hashed text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    salt text := current_setting('orders.erasure_salt', true);
BEGIN
    -- Never a hash without it: a check that silently matched nothing would miss an erased customer's STOP.
    IF coalesce(salt, '') = '' THEN
        RAISE EXCEPTION 'ERASURE_SALT is not set on this connection (store/database.py create_pool(erasure_salt=...))';
    END IF;
    RETURN 'erased:k:' || encode(sha256(convert_to(salt || ':' || hashed, 'UTF8')), 'hex');
END
$$;

CREATE FUNCTION erasure_hash(kind text, value text) RETURNS text
LANGUAGE sql STABLE AS $$ SELECT erasure_keyed(erasure_hash_018(kind, value)) $$;

ALTER TABLE erasure_salt ADD COLUMN salt_check text;

-- A shredded workflow's id (codec/data_keys.py, migration 019) stays hashed
-- with the salt stored here, not ERASURE_SALT: every process that seals
-- payloads checks it (the codec server, the CLI, a backend's client), and
-- they have no ERASURE_SALT. A workflow id is no contact detail: a dump can
-- at most test a guessed one for having been shredded.
CREATE FUNCTION workflow_id_hash(workflow_id text) RETURNS text
LANGUAGE sql STABLE AS $$ SELECT erasure_hash_018('workflow', workflow_id) $$;
