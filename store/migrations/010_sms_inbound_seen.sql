-- Inbound SMS keywords (STOP, START) already acted on, by Twilio's MessageSid.
-- Twilio's signature carries no timestamp, so a signed request posted again
-- (Twilio's own retry, or a captured one replayed) is known by its id and
-- changes nothing: a replayed START cannot undo a later STOP.
CREATE TABLE sms_keywords_seen (
    message_sid text PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now()
);
