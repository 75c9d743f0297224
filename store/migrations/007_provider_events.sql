-- What providers report about a message after they took it (SendGrid's
-- Event Webhook, Twilio's status callbacks): one row per event, its id
-- unique, so a repeated post changes nothing twice; kept for audit.
CREATE TABLE provider_events (
    provider            text NOT NULL CHECK (provider IN ('sendgrid', 'twilio')),
    -- SendGrid's sg_event_id; for Twilio, MessageSid:MessageStatus.
    event_id            text NOT NULL,
    -- As the provider names it: processed, delivered, bounce, dropped, spamreport...
    event               text NOT NULL,
    -- The message (NULL: not one of ours, e.g. mail sent from SendGrid's UI).
    ledger_key          text,
    provider_message_id text,
    -- Bounce type, reason or error code, scrubbed of contact data.
    detail              text,
    -- The provider's clock.
    occurred_at         timestamptz,
    received_at         timestamptz NOT NULL DEFAULT now(),
    -- What the order's workflow must hear (signal `message_undelivered`), and
    -- when it did (or was found finished): a post answered 503 because
    -- Temporal was away is posted again, and the signal goes then.
    workflow_id         text,
    signal              jsonb,
    signalled_at        timestamptz,
    PRIMARY KEY (provider, event_id)
);
CREATE INDEX provider_events_ledger_key ON provider_events (ledger_key);

-- What the provider said later about the message reaching the recipient;
-- `state` stays what the send did.
ALTER TABLE message_ledger
    ADD COLUMN delivery text
        CHECK (delivery IN ('delivered', 'bounced', 'dropped', 'undelivered', 'failed', 'spam_report')),
    ADD COLUMN delivery_at timestamptz;
