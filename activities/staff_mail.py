"""Mail to our own staff (a case's owner, a department lead): once per
ledger key, through the same ledger as customer mail (`message_class`
'staff', no customer, no consent: staff mail is part of their work), by
SendGrid when it is configured, else to the local outbox.

Simpler than customer mail, since nothing about it changes between
attempts (the caller renders it): an attempt claims the row with a lease
and sends. A row left 'sending' by an attempt that died may have reached
SendGrid, which shows a mail only `visible_after` it took it: the retry
waits for that, looks it up by its `message_key`, and sends only if it is
not there. A mail SendGrid refuses for good ends 'failed', non-retryable;
an outage is retried by the activity's policy.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.messaging import OUTBOX_INSERT
from providers import Provider, RenderedMessage
from providers.verdicts import ProviderFailure, Verdict
from workflows.models import Channel

log = logging.getLogger(__name__)

STAFF = "staff"

ROW = """
SELECT state, provider_message_id, error, claim_token,
       coalesce(extract(epoch FROM lease_until - now()), 0)::float8 AS lease_seconds_left,
       extract(epoch FROM now() - updated_at)::float8 AS seconds_since
FROM message_ledger WHERE key = $1
"""

REGISTER = """
INSERT INTO message_ledger (key, order_id, message_class, kind, channel, recipient, provider, state, attempts,
                            subject, body_text, body_html, claim_token, lease_until)
VALUES ($1, $2, 'staff', $3, 'email', $4, $5, 'sending', 1, $6, $7, $8, $9, now() + $10::float8 * interval '1 second')
ON CONFLICT (key) DO NOTHING
RETURNING key
"""

# A row put back 'pending' (nothing went out), or left 'sending' by an
# attempt whose lease ended: claimed by this one, if no other got there first.
CLAIM = """
UPDATE message_ledger
SET state = 'sending', claim_token = $2, lease_until = now() + $3::float8 * interval '1 second',
    attempts = attempts + 1, updated_at = now()
WHERE key = $1 AND claim_token IS NOT DISTINCT FROM $4 AND state IN ('pending', 'sending')
  AND (lease_until IS NULL OR lease_until <= now())
RETURNING key
"""

COMPLETE = """
UPDATE message_ledger
SET state = $3, provider_message_id = $4, error = $5, updated_at = now(), sent_at = CASE WHEN $3 = 'sent' THEN now() END,
    lease_until = NULL
WHERE key = $1 AND claim_token = $2
"""


def _with_attachments_listed(mail: RenderedMessage) -> str:
    """The outbox keeps text: attachments are named, not kept."""
    if not mail.attachments:
        return mail.text
    listed = "\n".join(
        f"- {a.filename} ({a.content_type}, {len(a.content):,} bytes{', inline' if a.content_id else ''})" for a in mail.attachments
    )
    return f"{mail.text}\n\nAttachments:\n{listed}"


class StaffMailer:
    def __init__(self, pool: asyncpg.Pool, provider: Provider | None) -> None:
        self._pool = pool
        self._provider = provider

    async def send(self, mail: RenderedMessage, *, order_id: str | None, kind: str) -> str:
        """The provider's (or the outbox's) message id; call from an activity."""
        lease = (activity.info().start_to_close_timeout or timedelta(seconds=60)).total_seconds()
        token = uuid.uuid4()
        provider_name = self._provider.name if self._provider else "outbox"
        registered = await self._pool.fetchval(
            REGISTER, mail.key, order_id, str(kind), mail.recipient, provider_name, mail.subject, mail.text, mail.html,
            token, lease,
        )
        if not registered:
            found = await self._earlier_attempt(mail, token, lease)
            if found:
                return found
        if self._provider is None:
            row_id = await self._pool.fetchval(
                OUTBOX_INSERT, mail.key, Channel.EMAIL.value, mail.recipient, mail.subject, _with_attachments_listed(mail), None
            )
            message_id = f"outbox-{row_id}"
        else:
            message_id = await self._send(mail, token)
        await self._pool.execute(COMPLETE, mail.key, token, "sent", message_id, None)
        log.info("staff mail %s sent", mail.key)
        return message_id

    async def _send(self, mail: RenderedMessage, token: uuid.UUID) -> str:
        try:
            return await self._provider.send(mail)
        except Exception as err:
            failure = ProviderFailure.of(self._provider, err)
        if failure.verdict is Verdict.REFUSED:
            await self._pool.execute(COMPLETE, mail.key, token, "failed", None, str(failure))
            raise ApplicationError(f"{mail.key}: {failure}", type="StaffMailRefused", non_retryable=True)
        # May have arrived: left 'sending' for the next attempt to look up.
        state = "sending" if failure.verdict is Verdict.MAY_HAVE_ARRIVED else "pending"
        await self._pool.execute(COMPLETE, mail.key, token, state, None, str(failure))
        raise ApplicationError(f"{mail.key}: {failure}", type="ProviderUnavailable")

    async def _earlier_attempt(self, mail: RenderedMessage, token: uuid.UUID, lease: float) -> str | None:
        """An earlier attempt registered the mail: its message id if it went
        out, else None once this attempt holds the claim to send it."""
        row = await self._pool.fetchrow(ROW, mail.key)
        if row["state"] == "sent":
            return row["provider_message_id"]
        if row["state"] == "failed":
            raise ApplicationError(f"{mail.key}: {row['error']}", type="StaffMailRefused", non_retryable=True)
        if row["lease_seconds_left"] > 0:
            raise ApplicationError(
                f"another attempt holds {mail.key}", type="ClaimHeld", next_retry_delay=timedelta(seconds=row["lease_seconds_left"])
            )
        may_have_arrived = row["state"] == "sending" and self._provider is not None
        if may_have_arrived:
            wait = self._provider.visible_after.total_seconds() - row["seconds_since"]
            if wait > 0:  # SendGrid could not show it yet
                raise ApplicationError(
                    f"{mail.key} may have reached {self._provider.title}: looked up there once it can tell",
                    type="StaffMailInDoubt", next_retry_delay=timedelta(seconds=wait),
                )
        if not await self._pool.fetchval(CLAIM, mail.key, token, lease, row["claim_token"]):
            raise ApplicationError(f"another attempt holds {mail.key}", type="ClaimHeld")
        if may_have_arrived:
            try:
                found = await self._provider.look_up(mail)
            except Exception as err:
                await self._pool.execute(COMPLETE, mail.key, token, "sending", None, str(ProviderFailure.of(self._provider, err)))
                raise ApplicationError(f"{mail.key}: look-up failed", type="ProviderUnavailable") from None
            if found:
                await self._pool.execute(COMPLETE, mail.key, token, "sent", found, None)
                return found
        return None
