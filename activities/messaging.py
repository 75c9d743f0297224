"""send_message: the one way a message leaves the system.

Exactly-once effect through a ledger row keyed by workflow id + touchpoint +
channel. The row is claimed ('pending' -> 'sending', in the same statement
that registers it) before the provider call and completed after it:

- a retry that finds 'sent', 'failed', 'skipped' or 'in_doubt' returns that
  outcome;
- a retry that finds 'sending' knows an earlier attempt died or got no answer
  after the request may have reached the provider. Where the provider can be
  asked (Twilio), it is asked: found means 'sent', not found means send
  again. Where it cannot (SendGrid), the row becomes 'in_doubt' and nothing
  is sent again; the workflow flags it for an operator;
- an error that proves the request never arrived (refused connection, 429,
  5xx) puts the row back to 'pending' and raises, so Temporal retries;
- a permanent refusal marks it 'failed' and returns, so the workflow can use
  the other channel.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.config import ProviderConfig
from activities.providers import Provider, RenderedMessage, SendFailure, SendGridEmail, TwilioSms
from activities.recommendations import recommend
from activities.templates import render
from workflows.models import Channel, DeliveryState, MessageOutcome, MessageRequest, OrderInput, Touchpoint

log = logging.getLogger(__name__)

# Registers and claims in one round trip. Returns the row's state after the
# statement: 'sending' when this attempt holds the claim, 'skipped' when just
# registered as such, nothing when an earlier attempt owns the row.
REGISTER_AND_CLAIM = """
INSERT INTO message_ledger AS l (key, order_id, kind, channel, recipient, state, attempts, provider, error)
VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $6 = 'sending' THEN 1 ELSE 0 END, $7, $8)
ON CONFLICT (key) DO UPDATE SET state = 'sending', attempts = l.attempts + 1, updated_at = now()
    WHERE l.state = 'pending'
RETURNING state
"""

# What PostgreSQL going away looks like: lost connections, and the errors a
# server answers with while it shuts down or starts up (SQLSTATE class 57).
DATABASE_UNAVAILABLE = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
)

# How long a completed send keeps trying to record its outcome while
# PostgreSQL is unreachable, before leaving the row for a retry to find.
RECORD_PATIENCE_SECONDS = 40.0

# Parsed orders kept by a worker (about 2 KB each).
ORDERS_KEPT_IN_MEMORY = 4096


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
        self._orders: OrderedDict[str, OrderInput] = OrderedDict()

    @activity.defn
    async def send_message(self, request: MessageRequest) -> MessageOutcome:
        order = await self._recorded_order(request.order_id)
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
        initial = "skipped" if request.kind is Touchpoint.RECOMMENDATIONS and not details["products"] else "sending"
        # Rendered before the claim: a crash between claim and request leaves
        # a row that cannot tell whether it was sent, so that gap is kept short.
        content, html_body = render(request.kind, order, details)
        message = RenderedMessage(
            key=request.key,
            recipient=recipient,
            subject=content.subject,
            text=content.sms if request.channel is Channel.SMS else "\n\n".join(content.paragraphs),
            html=html_body,
        )
        state = await self._pool.fetchval(
            REGISTER_AND_CLAIM,
            request.key,
            order.order_id,
            request.kind.value,
            request.channel.value,
            recipient,
            initial,
            provider_name,
            "nothing to recommend" if initial == "skipped" else None,
        )
        if state is None:
            settled = await self._settle_earlier_attempt(request, provider, message)
            if settled:
                return settled
        if initial == "skipped":
            if state != "skipped":  # an earlier attempt left the row open; nothing to send now
                await self._record(request.key, "skipped", error="nothing to recommend")
            return self._outcome(request, DeliveryState.SKIPPED, error="nothing to recommend")
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
            # Unanswered: the row stays 'sending' so the retry checks before sending.
            await self._record(request.key, "sending" if failure.maybe_delivered else "pending", error=str(failure))
            raise ApplicationError(str(failure), type="ProviderUnavailable") from None
        await self._record(request.key, "sent", message_id=message_id)
        return self._outcome(request, DeliveryState.SENT, message_id=message_id)

    async def _recorded_order(self, order_id: str) -> OrderInput:
        """The order as record_order stored it. A stored order never changes
        (a second record of the same id is ignored), so the latest ones stay
        in memory: an order's sends often come together (confirmation and
        payment; a notice by email and by SMS)."""
        order = self._orders.get(order_id)
        if order is not None:
            self._orders.move_to_end(order_id)
            return order
        document = await self._pool.fetchval("SELECT document FROM orders WHERE order_id = $1", order_id)
        if document is None:
            raise ApplicationError(f"order {order_id} is not recorded", type="OrderNotRecorded")
        order = self._orders[order_id] = OrderInput.model_validate_json(document)
        if len(self._orders) > ORDERS_KEPT_IN_MEMORY:
            self._orders.popitem(last=False)
        return order

    async def _settle_earlier_attempt(
        self, request: MessageRequest, provider: Provider | None, message: RenderedMessage
    ) -> MessageOutcome | None:
        """An earlier attempt owns the row. Returns its outcome, or None when
        this attempt has re-claimed the row and should send."""
        row = await self._pool.fetchrow(
            "SELECT state, provider_message_id, error FROM message_ledger WHERE key = $1", request.key
        )
        if row["state"] != "sending":
            return self._outcome(request, DeliveryState(row["state"]), message_id=row["provider_message_id"], error=row["error"])
        # The earlier attempt died or got no answer after it may have sent.
        # (Without a provider it went to the outbox, whose insert is idempotent.)
        if provider is not None:
            if not provider.can_look_up:
                await self._record(request.key, "in_doubt", error=row["error"])
                log.error("message %s may or may not have been sent; not sending it again", request.key)
                return self._outcome(request, DeliveryState.IN_DOUBT, error=row["error"])
            try:
                found = await asyncio.to_thread(provider.look_up, message)
            except SendFailure as failure:
                raise ApplicationError(str(failure), type="ProviderUnavailable") from None
            if found:
                log.info("%s already had %s as %s", provider.name, request.key, found)
                await self._record(request.key, "sent", message_id=found)
                return self._outcome(request, DeliveryState.SENT, message_id=found)
        await self._pool.execute(
            "UPDATE message_ledger SET attempts = attempts + 1, updated_at = now() WHERE key = $1", request.key
        )
        return None

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
            except DATABASE_UNAVAILABLE:
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
