-- Service recovery: one row per case (workflows/case_handling.py), kept up
-- to date by the case's workflow, read by `orders case` and the WOCAS report.
CREATE TABLE cases (
    -- The workflow id: case-{order_id}-{n}.
    case_id          text PRIMARY KEY,
    order_id         text NOT NULL,
    n                integer NOT NULL,
    trigger          text NOT NULL CHECK (trigger IN ('low_rating', 'not_helpful', 'complaint')),
    -- What opened it (e.g. the vote's ledger key): a trigger repeated opens no second case.
    trigger_key      text NOT NULL UNIQUE,
    customer_id      text NOT NULL,
    seller_id        text NOT NULL,
    category         text,
    -- The customer's words (a complaint, a comment); erased with the customer.
    text             text,
    owner            text,
    status           text NOT NULL DEFAULT 'open'
        CHECK (status IN ('open', 'acknowledged', 'escalated', 'resolved')),
    escalation_level integer NOT NULL DEFAULT 0,
    -- When the owner must acknowledge by (NULL once acknowledged): overdue past it.
    due_at           timestamptz,
    opened_at        timestamptz NOT NULL DEFAULT now(),
    acknowledged_at  timestamptz,
    resolved_at      timestamptz,
    resolution       text,
    resolved_by      text,
    reopened_at      timestamptz,
    -- What the customer said when answering "not resolved".
    reopen_comment   text,
    sla_breaches     integer NOT NULL DEFAULT 0,
    UNIQUE (order_id, n)
);
CREATE INDEX cases_open ON cases (status, due_at) WHERE status <> 'resolved';
CREATE INDEX cases_opened ON cases (opened_at);
