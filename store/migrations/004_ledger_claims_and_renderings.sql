-- Each attempt claims a message with its own token and a lease (the database
-- clock plus what is left of the attempt's start_to_close_timeout), so a
-- second attempt started while the first still runs can neither send nor
-- overwrite; every completion is a compare-and-set on the token.
-- The rendering is stored when the message is first claimed, so every retry
-- sends exactly the same text, and Twilio's Message list can be searched for it.
ALTER TABLE message_ledger
    ADD COLUMN claim_token uuid,
    ADD COLUMN lease_until timestamptz,
    ADD COLUMN subject     text,
    ADD COLUMN body_text   text,
    ADD COLUMN body_html   text;
