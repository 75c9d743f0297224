"""send_message: the one way a message leaves the system.

Exactly-once effect through a ledger row keyed by workflow id + touchpoint +
channel. The row is claimed ('pending' -> 'sending') in its own transaction
before the provider call and completed after it:

- a retry that finds 'sent', 'failed' or 'skipped' returns that outcome;
- a retry that finds 'sending' knows an earlier attempt died between claiming
  and recording the answer: the provider may have delivered it, so the row
  becomes 'in_doubt' and nothing is sent again (the workflow flags it);
- a passing provider error (429, 5xx, timeout) puts the row back to 'pending'
  and raises, so Temporal retries with backoff;
- a permanent refusal marks it 'failed' and returns, so the workflow can use
  the other channel.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.config import ProviderConfig
from activities.providers import Provider, RenderedMessage, SendFailure, SendGridEmail, TwilioSms
from activities.recommendations import recommend
from activities.templates import render
from workflows.models import Channel, DeliveryState, MessageOutcome, MessageRequest, Touchpoint

log = logging.getLogger(__name__)

REGISTER = """
INSERT INTO message_ledger (key, order_id, kind, channel, recipient, state, provider, error)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (key) DO NOTHING
"""

CLAIM = """
UPDATE message_ledger SET state = 'sending', attempts = attempts + 1, updated_at = now()
WHERE key = $1 AND state = 'pending'
RETURNING key
"""

# How long a completed send keeps trying to record its outcome while
# PostgreSQL is unreachable, before leaving the row for a retry to find.
RECORD_PATIENCE_SECONDS = 40.0


class MessagingActivities:
    def __init__(
        self,
        pool: asyncpg.Pool,
        config: ProviderConfig,
        providers: dict[Channel, Provider] | None = None,
    ) -> None:
        self._pool = pool
        if providers is None:
            providers = {}
            if config.email_configured:
                providers[Channel.EMAIL] = SendGridEmail(config)
            if config.sms_configured:
                providers[Channel.SMS] = TwilioSms(config)
        self._providers = providers

    @activity.defn
    async def send_message(self, request: MessageRequest) -> MessageOutcome:
        order = request.order
        recipient = order.customer.email if request.channel is Channel.EMAIL else order.customer.phone
        if not recipient:
            return self._outcome(request, DeliveryState.SKIPPED, error="no recipient for this channel")
        provider = self._providers.get(request.channel)
        provider_name = provider.name if provider else "outbox"

        details: dict[str, Any] = dict(request.details)
        if request.kind is Touchpoint.RECOMMENDATIONS:
            details["products"] = await recommend(
                self._pool,
                order.customer.customer_id,
                [i.sku for i in order.items],
                sorted({i.category for i in order.items}),
            )

        # Nothing to recommend is settled for good, like a send.
        initial = "skipped" if request.kind is Touchpoint.RECOMMENDATIONS and not details["products"] else "pending"
        async with self._pool.acquire() as conn:
            await conn.execute(
                REGISTER,
                request.key,
                order.order_id,
                request.kind.value,
                request.channel.value,
                recipient,
                initial,
                provider_name,
                "nothing to recommend" if initial == "skipped" else None,
            )
            if not await conn.fetchval(CLAIM, request.key):
                return await self._settled(conn, request)

        content, html_body = render(request.kind, order, details)
        message = RenderedMessage(
            key=request.key,
            recipient=recipient,
            subject=content.subject,
            text=content.sms if request.channel is Channel.SMS else "\n\n".join(content.paragraphs),
            html=html_body,
        )
        try:
            if provider is None:
                message_id = await self._to_outbox(request.channel, message)
            else:
                message_id = await asyncio.to_thread(provider.send, message)
        except SendFailure as failure:
            if failure.permanent:
                await self._record(request.key, "failed", error=str(failure))
                log.warning("%s refused %s for good: %s", provider_name, request.key, failure)
                return self._outcome(request, DeliveryState.FAILED, error=str(failure))
            await self._record(request.key, "pending", error=str(failure))
            raise ApplicationError(str(failure), type="ProviderUnavailable") from None
        await self._record(request.key, "sent", message_id=message_id)
        return self._outcome(request, DeliveryState.SENT, message_id=message_id)

    async def _settled(self, conn: asyncpg.Connection, request: MessageRequest) -> MessageOutcome:
        """Outcome of a key that an earlier attempt already claimed."""
        row = await conn.fetchrow(
            """
            UPDATE message_ledger
            SET state = CASE WHEN state = 'sending' THEN 'in_doubt' ELSE state END, updated_at = now()
            WHERE key = $1
            RETURNING state, provider_message_id, error
            """,
            request.key,
        )
        state = DeliveryState(row["state"])
        if state is DeliveryState.IN_DOUBT:
            log.error("message %s may or may not have been sent; not sending it again", request.key)
        return self._outcome(request, state, message_id=row["provider_message_id"], error=row["error"])

    async def _record(
        self, key: str, state: str, *, message_id: str | None = None, error: str | None = None
    ) -> None:
        """Complete the ledger row, riding out a short database outage."""
        delay, waited = 0.5, 0.0
        while True:
            try:
                await self._pool.execute(
                    """
                    UPDATE message_ledger
                    SET state = $2, provider_message_id = $3, error = $4, updated_at = now(),
                        sent_at = CASE WHEN $2 = 'sent' THEN now() END
                    WHERE key = $1
                    """,
                    key,
                    state,
                    message_id,
                    error,
                )
                return
            except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError):
                if waited >= RECORD_PATIENCE_SECONDS:
                    raise
                await asyncio.sleep(delay)
                waited += delay
                delay = min(delay * 2, 5.0)

    async def _to_outbox(self, channel: Channel, message: RenderedMessage) -> str:
        row_id = await self._pool.fetchval(
            """
            INSERT INTO outbox (ledger_key, channel, recipient, subject, body) VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (ledger_key) DO UPDATE SET ledger_key = EXCLUDED.ledger_key
            RETURNING id
            """,
            message.key,
            channel.value,
            message.recipient,
            message.subject if channel is Channel.EMAIL else None,
            message.text,
        )
        return f"outbox-{row_id}"

    @staticmethod
    def _outcome(
        request: MessageRequest, state: DeliveryState, *, message_id: str | None = None, error: str | None = None
    ) -> MessageOutcome:
        return MessageOutcome(
            key=request.key, channel=request.channel, state=state, provider_message_id=message_id, error=error
        )
