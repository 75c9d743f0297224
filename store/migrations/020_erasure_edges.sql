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
