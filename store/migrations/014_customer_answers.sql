-- What customers answer (web/answers.py): the feedback page, "Was this
-- helpful?" under every email.

-- Stars per item. The feedback page rates each item; a backend's
-- feedback_submitted rates the items as one, and each item gets that rating.
CREATE TABLE item_ratings (
    order_id text NOT NULL REFERENCES orders,
    sku      text NOT NULL,
    rating   smallint NOT NULL CHECK (rating BETWEEN 1 AND 5),
    PRIMARY KEY (order_id, sku)
);
CREATE INDEX item_ratings_sku ON item_ratings (sku);

-- One vote per message, by its ledger key: a second click changes nothing.
-- The comment ("what was wrong?") comes after a "no", once.
CREATE TABLE message_votes (
    ledger_key   text PRIMARY KEY,
    -- The order the message was about; NULL for the customer's journey's.
    order_id     text,
    kind         text NOT NULL,
    channel      text NOT NULL,
    helpful      boolean NOT NULL,
    comment      text,
    voted_at     timestamptz NOT NULL DEFAULT now(),
    commented_at timestamptz
);
CREATE INDEX message_votes_kind ON message_votes (kind, voted_at);

-- What customers submit owes workflows signals as provider reports do, and
-- goes by the same relay (web/signals.py). A signal that opens its own
-- workflow (a case) names the workflow type to start with it.
ALTER TABLE provider_events DROP CONSTRAINT provider_events_provider_check;
ALTER TABLE provider_events ADD CONSTRAINT provider_events_provider_check
    CHECK (provider IN ('sendgrid', 'twilio', 'customer'));
ALTER TABLE provider_events ADD COLUMN start_workflow text;
