-- A mail in doubt (its request may have reached SendGrid, no answer came) is
-- looked up in SendGrid's Email Activity once it would show there, and sent
-- if it is not: settle_at is that moment; NULL for one that can never be
-- settled (Email Activity not available), left to an operator.
ALTER TABLE message_ledger ADD COLUMN settle_at timestamptz;

-- `orders attention`: the messages an operator may have to act on.
CREATE INDEX message_ledger_attention ON message_ledger (updated_at) WHERE state IN ('failed', 'in_doubt');
