"""send_message: the one way a message leaves the system, and never twice.

The ledger
----------
One row per message in `message_ledger`, keyed by workflow id + touchpoint +
channel. It keeps the message as first rendered (subject, text, html): every
attempt sends exactly that, so a retry never sends something different, and
Twilio's Message list can be searched for it. Its state:

- 'sending': an attempt holds the claim, and its request may be on its way;
- 'pending': no claim, and nothing went out: an answer proved the request
  never arrived (refused connection, 429, 500, 503), or the provider rejected
  our credentials. The next attempt claims it and sends;
- final, returned as they are to any later attempt: 'sent'; 'failed'
  (refused for good, so the workflow can use the other channel; an operator
  may resend it); 'skipped' (nothing to recommend);
- 'in_doubt': it may have gone out, and cannot be checked yet: returned as it
  is, with `settle_at`, the moment the provider would show it (SENDGRID_SETTLE_AFTER),
  until a SETTLE request then (below); with no `settle_at` it cannot be
  checked at all and stays flagged for an operator, who may resend it;
- 'not_permitted': nothing went out, because the customer's consent or the
  suppression list forbade it when it was due, or the provider said the
  recipient opted out (below). Final for the attempt that decided it, with
  the reason (never contact data) for operators, but not for good: a later
  send of the same key reads consent again, and if the message may go now,
  registers it anew (rendered then, and counted by the cap from then).

What the provider reports later (store/provider_events.py) settles a
row still 'sending' or 'in_doubt' as 'sent', and goes in `delivery`
(delivered, bounced, dropped, undelivered, failed, spam_report).

Each row also names its customer and its message class ('transactional' or
'marketing'); a message of the customer's journey (welcome, loyalty reward,
win-back) belongs to no order, and is written to the customer's contact
details as stored in `customers` when it is sent.

Permission, at send time
------------------------
Consent and suppressions are read when a message is due, never captured
earlier (store/consent.py; the rule is migration 021's message_refusal): by
the statement that registers a new transactional message, before a new
marketing row is registered, before a 'pending' row is claimed, and before a
taken-over row is sent again once a look-up proved the earlier request never
arrived. No consent row means a transactional message goes and a marketing
one does not; a suppressed address or number gets nothing. A refused message
makes no request, is registered 'not_permitted' and returned as
NOT_PERMITTED; the workflow may try the other channel, under a different key.
A row an earlier attempt left 'sending' is resolved first, as below: a
message that may have gone out is not un-sent by a consent withdrawn since.

Twilio's 21610 (the number replied STOP) is an opt-out: the number is
suppressed (source 'provider'), the row ends 'not_permitted', and
nothing more is sent to it, on any message class, until it is lifted.

The marketing cap
-----------------
A marketing row is registered by one statement that takes an advisory lock
on the customer, then counts that customer's marketing rows created within
MARKETING_CAP_WINDOW that are 'pending', 'sending', 'sent' or 'in_doubt'. At
MARKETING_CAP or more nothing is registered, and the outcome is DEFERRED with
`not_before`: the moment the oldest of them that holds a slot leaves the
window. Two sends for one customer queue on the lock, so they cannot both
pass. The workflow sends a deferred message again at `not_before`, with the
same key, and it is counted then.

Quiet hours
-----------
An SMS request carries the customer's quiet hours (`quiet_hours`); none is
sent inside them, whichever attempt it is: the workflow waits for their end
before each attempt, but the server retries an attempt without it. "Now"
is the server's clock for this attempt (`current_attempt_scheduled_time`),
not the worker's. Inside them the outcome is DEFERRED, `not_before` their
end, and nothing is registered or claimed (no slot of the cap is taken). A
row an earlier attempt left 'sending' is looked up first (found means
'sent'); proved never to have arrived, it is put back 'pending' and
DEFERRED. So DEFERRED always means no request was made.

Unsubscribing
-------------
A marketing email carries a signed token (messages/unsubscribe_tokens.py)
in a visible link, in text and HTML, and in RFC 8058 headers
(List-Unsubscribe with the link and a mailto, List-Unsubscribe-Post
One-Click). The headers are part of the stored rendering (`headers`), so
every attempt sends the same ones. Without UNSUBSCRIBE_SECRET no marketing
email is rendered at all: a non-retryable UnsubscribeNotConfigured error.
Marketing SMS end with "Reply STOP to opt out".

Every email also ends with "Was this helpful?" yes and no, links signed
with the same secret and bound to the message's ledger key
(messages/answer_links.py), and the feedback request links to the feedback
page until the order's feedback window closes. Without the secret, mail
about an order goes without them.

The lease
---------
An attempt claims a row with its own `claim_token` and a lease, `lease_until`:
the database clock plus what is left of the attempt's start_to_close_timeout,
after which Temporal may start another attempt. So:

- an attempt waits for a free provider request slot (PROVIDER_THREADS per
  worker) before it claims, and starts a request only while the lease still
  covers the request (connect and read timeouts) and recording the answer;
  every wait, PostgreSQL's included, is bounded by the lease;
- every completion is a compare-and-set on the token: an attempt that lost its
  claim changes nothing;
- an attempt that finds another's live lease sends nothing and retries once
  that lease ends;
- a 'sending' row whose lease has ended (or was ended because no answer came,
  or a gateway answered 502/504) is taken over: an earlier request may have
  arrived. Twilio is asked for a message with the same To, From and body: found
  means 'sent', not found means it is sent now. SendGrid shows a mail in its
  Email Activity only minutes after it took it, so the row becomes 'in_doubt'
  until then;
- from the claim to the recorded outcome an attempt runs to its end even when
  cancelled (a worker shutting down): its request is not cut off halfway,
  and its answer is recorded, so no request is left behind unrecorded;
- an outcome PostgreSQL cannot take is heartbeated; the next attempt applies
  it if the row still carries that claim. Only a send keeps trying to record
  for as long as its lease lasts.

A provider that rejects our credentials (401, 403) is paused in this worker
process, since its configuration comes from the environment: one error line,
the row put back, and a non-retryable ProviderMisconfigured error, for this
send and, without a request, for every later one to that provider.

Settling what is in doubt
-------------------------
At `settle_at` the workflow sends the same key again with mode SETTLE. A row
'sent' meanwhile (SendGrid's event webhook settles rows by the ledger key) is
returned as it is. An 'in_doubt' row is claimed and looked up in SendGrid's
Email Activity by its custom arg `message_key`: found means 'sent', with
SendGrid's msg_id; not found means the earlier request never arrived, and
the message is sent now, once (consent read again), or, when the journey has
overtaken it (SETTLE_WITHOUT_SENDING), not sent and the row put back
'pending'. A look-up that fails for now (429, 5xx, no answer) leaves the row
'in_doubt', due at once, and the activity retries; one Email Activity will
never answer (401, 403, 404: the add-on or the key's access is missing)
leaves it 'in_doubt' for good, flagged. An operator's RESEND claims a 'failed'
or 'in_doubt' row and sends it (an in-doubt one only if the look-up, where it
works, does not find it).

A send the journey withdrew after an attempt that may have reached the
provider comes as SETTLE_WITHOUT_SENDING on its 'sending' row: taken over as
above (an SMS looked up at Twilio at once, a mail left 'in_doubt' until
SendGrid can show it), 'sent' if found, never sent anew; with no row, or a
'pending' one, nothing went out and it is SUPERSEDED at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.config import ProviderConfig
from messages import answer_links, unsubscribe_tokens
from messages.templates import NO_LINKS, Links, render, render_for_customer
from providers import Provider, RenderedMessage, request_limits
from providers.sendgrid import SendGridEmail
from providers.twilio import TwilioSms
from providers.verdicts import ProviderFailure, Verdict
from store import consent
from store.recommendations import recommend
from workflows.models import (
    CUSTOMER_ERASED,
    Channel,
    Customer,
    DeliveryState,
    MessageClass,
    MessageOutcome,
    MessageRequest,
    OrderInput,
    SendMode,
    Touchpoint,
    message_class,
)

log = logging.getLogger(__name__)

LEDGER_ROW = """
SELECT state, recipient, claim_token, provider_message_id, error, created_at, subject, body_text, body_html, headers,
       settle_at, blanked_at, coalesce(extract(epoch FROM lease_until - now()), 0)::float8 AS lease_seconds_left
FROM message_ledger WHERE key = $1
"""

# The customer erased (store/erasure.py), read under a share lock on their
# row: a statement that writes their data waits for an erasure under way
# (`forget` updates that row first) and then sees it; one that got the lock
# first has committed before `forget` blanks what it wrote. So a send
# claimed before the erasure and recorded after it stores nothing of theirs.
ERASED_NOW = "SELECT erased_at IS NOT NULL AS erased FROM customers WHERE customer_id = {} FOR SHARE"

# Consent or the suppression list forbids the message, for `reason`: a new
# row, or a 'pending' one (never sent), ends 'not_permitted' with the reason
# and no rendering; one already 'not_permitted' gets today's reason. Nothing
# when the row is in any other state (another attempt got there first).
_REFUSING = """
INSERT INTO message_ledger AS l (key, order_id, customer_id, message_class, kind, channel, recipient, provider,
                                 state, error)
SELECT $1, $2, $3, $4, $5, $6, {recipient}, $8, 'not_permitted', {reason}
{only}
ON CONFLICT (key) DO UPDATE
SET state = 'not_permitted', error = EXCLUDED.error, claim_token = NULL, lease_until = NULL, updated_at = now()
WHERE l.state IN ('pending', 'not_permitted')
RETURNING key
"""


# Registers the message with its rendering and claims it ('sending'), or
# registers it as final ('skipped'). Nothing when the row exists already,
# unless it is 'not_permitted' and the message may go now: then it is
# registered anew, as if new (its rendering, if any, never went out).
# Nothing either, `erased`, once the customer was erased. With
# `read_permission`, consent is read in the same statement: registered so
# only when message_refusal (migration 021) says it may go, else as REFUSE
# does, with its `refusal`; neither `created_at` nor `refused` means the row
# existed and was left as it is.
def _registering(*, within_the_cap: bool = False, read_permission: bool = False) -> str:
    cap = customer_after = capped = slots = verdict = permitted = refused = told = ""
    if within_the_cap:
        # The customer's marketing lock first (migration 022), their row's
        # share lock after it: a send queued on the lock holds nothing an
        # erasure or an order's recording waits for.
        cap = "cap AS (SELECT * FROM marketing_slots_taken($3, $17, $1)),\n"
        customer_after = " AND (SELECT registered FROM cap) IS NOT NULL"
        capped = " AND cardinality((SELECT slots FROM cap)) < $18"
        slots = ",\n       (SELECT slots FROM cap) AS slots, (SELECT registered FROM cap) AS registered_meanwhile"
    if read_permission:
        verdict = "\nverdict AS (SELECT message_refusal($3, $4, $6, $7) AS refusal WHERE NOT EXISTS (SELECT 1 FROM customer WHERE erased)),"
        permitted = " AND (SELECT refusal FROM verdict) IS NULL"
        refusing = _REFUSING.format(recipient="$7", reason="refusal", only="FROM verdict WHERE refusal IS NOT NULL")
        refused = f",\nrefused AS ({refusing})"
        told = ",\n       (SELECT refusal FROM verdict) AS refusal, EXISTS (SELECT 1 FROM refused) AS refused"
    return f"""
WITH {cap}customer AS ({ERASED_NOW.format("$3" + customer_after)}),{verdict}
registered AS (
INSERT INTO message_ledger AS l (key, order_id, customer_id, message_class, kind, channel, recipient, provider, state,
                                 attempts, error, subject, body_text, body_html, headers, claim_token, lease_until)
SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, CASE WHEN $9 = 'sending' THEN 1 ELSE 0 END, $10,
       $11, $12, $13, $14::jsonb, $15, now() + $16::float8 * interval '1 second'
WHERE NOT EXISTS (SELECT 1 FROM customer WHERE erased){capped}{permitted}
ON CONFLICT (key) DO UPDATE
SET recipient = EXCLUDED.recipient, provider = EXCLUDED.provider, state = EXCLUDED.state,
    attempts = l.attempts + EXCLUDED.attempts, error = EXCLUDED.error, provider_message_id = NULL,
    subject = EXCLUDED.subject, body_text = EXCLUDED.body_text, body_html = EXCLUDED.body_html,
    headers = EXCLUDED.headers, claim_token = EXCLUDED.claim_token, lease_until = EXCLUDED.lease_until,
    customer_id = EXCLUDED.customer_id, message_class = EXCLUDED.message_class,
    created_at = now(), updated_at = now(), blanked_at = NULL
WHERE l.state = 'not_permitted'
RETURNING created_at
){refused}
SELECT (SELECT created_at FROM registered) AS created_at, EXISTS (SELECT 1 FROM customer WHERE erased) AS erased{slots}{told}
"""


REGISTER = _registering()

# A new transactional message: consent read and the row written in one round trip.
REGISTER_IF_PERMITTED = _registering(read_permission=True)

# A marketing message, only while the customer's marketing messages in the
# window ($17 seconds) hold fewer than the cap ($18) of its slots: counted
# under a lock on the customer (migration 022), so concurrent sends for one
# customer cannot both pass. `slots`: those messages' created_at, oldest first.
REGISTER_WITHIN_THE_CAP = _registering(within_the_cap=True)

# A message refused for $9 ($1 to $8 as REGISTER's). No recipient once the
# customer was erased.
REFUSE = f"""
WITH customer AS ({ERASED_NOW.format("$3")})
""" + _REFUSING.format(recipient="CASE WHEN EXISTS (SELECT 1 FROM customer WHERE erased) THEN '' ELSE $7 END", reason="$9", only="")

# Forgotten on request (store/erasure.py): nothing more goes to the customer.
ERASED = "SELECT erased_at IS NOT NULL AS erased FROM customers WHERE customer_id = $1"

CUSTOMER = "SELECT customer_id, name, email, phone, timezone, erased_at IS NOT NULL AS erased FROM customers WHERE customer_id = $1"

RECORDED_ORDER = """
SELECT document, (SELECT erased_at IS NOT NULL FROM customers c WHERE c.customer_id = o.customer_id) AS erased
FROM orders o WHERE order_id = $1
"""

CLAIM_PENDING = """
UPDATE message_ledger
SET state = 'sending', claim_token = $2, lease_until = now() + $3::float8 * interval '1 second',
    attempts = attempts + 1, updated_at = now()
WHERE key = $1 AND state = 'pending'
RETURNING created_at
"""

# A row in doubt being settled, or a failed one an operator resends; only if
# no other attempt claimed it since it was read. The resend is counted here,
# the settling attempt's own request when it is made.
CLAIM_SETTLED = """
UPDATE message_ledger
SET state = 'sending', claim_token = $2, lease_until = now() + $3::float8 * interval '1 second', settle_at = NULL,
    attempts = attempts + CASE WHEN state = 'failed' THEN 1 ELSE 0 END, updated_at = now()
WHERE key = $1 AND state = $4
RETURNING created_at
"""

# Only once the earlier attempt's lease has ended, and only if no other
# attempt took the row over since it was read.
TAKE_OVER = """
UPDATE message_ledger
SET claim_token = $2, lease_until = now() + $3::float8 * interval '1 second', updated_at = now()
WHERE key = $1 AND state = 'sending' AND claim_token IS NOT DISTINCT FROM $4
  AND (lease_until IS NULL OR lease_until <= now())
RETURNING created_at
"""

# A taken-over row about to be sent again.
COUNT_ATTEMPT = "UPDATE message_ledger SET attempts = attempts + 1 WHERE key = $1 AND claim_token = $2"

# Compare-and-set on the claim. A row left 'sending' (the request may have
# arrived) has its lease ended, so the next attempt checks at once. A row left
# 'in_doubt' is due for settling $6 seconds from now; never, with NULL.
COMPLETE = """
UPDATE message_ledger
SET state = $3, provider_message_id = $4, error = $5, updated_at = now(),
    sent_at = CASE WHEN $3 = 'sent' THEN now() END,
    lease_until = CASE WHEN $3 = 'sending' THEN now() END,
    settle_at = now() + $6::float8 * interval '1 second'
WHERE key = $1 AND claim_token = $2 AND state = 'sending'
RETURNING settle_at
"""

# Idempotent: a second insert of a key returns the first one's id. A
# message whose customer was erased since its claim went out, but the
# outbox keeps none of it.
OUTBOX_INSERT = f"""
WITH customer AS ({ERASED_NOW.format("(SELECT customer_id FROM message_ledger WHERE key = $1)")}),
kept AS (SELECT NOT EXISTS (SELECT 1 FROM customer WHERE erased) AS kept)
INSERT INTO outbox (ledger_key, channel, recipient, subject, body, headers)
SELECT $1, $2, CASE WHEN kept THEN $3 ELSE '' END, CASE WHEN kept THEN $4 END, CASE WHEN kept THEN $5 ELSE '' END,
       CASE WHEN kept THEN $6::jsonb END
FROM kept
ON CONFLICT (ledger_key) DO UPDATE SET ledger_key = EXCLUDED.ledger_key
RETURNING id
"""

NOTHING_TO_RECOMMEND = "nothing to recommend"
# A mail settled without sending: found nowhere, and overtaken by the journey.
OVERTAKEN_NOT_SENT = "not found at the provider once it could tell, and not sent: the journey overtook it"

# What PostgreSQL going away looks like: lost connections, timeouts (an
# OSError), and the errors a server answers with while it shuts down or
# starts up (SQLSTATE class 57).
DATABASE_UNAVAILABLE = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
)

# The least time kept for recording a provider's answer: a request starts only
# when the lease covers the request and then this.
RECORD_RESERVE_SECONDS = 5.0

# The histogram of provider requests (README, "Metrics").
PROVIDER_REQUEST = "orders_provider_request"

# Parsed orders kept by a worker (about 2 KB each).
ORDERS_KEPT_IN_MEMORY = 4096

T = TypeVar("T")


@dataclass(frozen=True)
class Budget:
    """What is left of this attempt's start_to_close_timeout: once it has run
    out Temporal may start another attempt, so this one must be done by then."""

    total: float
    deadline: float  # time.monotonic()

    @classmethod
    def of_this_attempt(cls) -> Budget:
        info = activity.info()
        timeout = info.start_to_close_timeout or info.schedule_to_close_timeout
        assert timeout, "Temporal gives every activity one of these timeouts"
        return cls(timeout.total_seconds(), time.monotonic() + timeout.total_seconds())

    def left(self) -> float:
        return self.deadline - time.monotonic()


@dataclass(frozen=True)
class LedgerRow:
    state: str
    claim_token: uuid.UUID | None
    provider_message_id: str | None
    error: str | None
    lease_seconds_left: float
    # None for rows registered before renderings were kept.
    message: RenderedMessage | None
    # 'in_doubt': when it can be settled; None when it never can.
    settle_at: datetime | None
    # When retention blanked its rendering and recipient (store/retention.py): never sent again.
    blanked_at: datetime | None = None

    @classmethod
    def of(cls, key: str, row: asyncpg.Record) -> LedgerRow:
        message = None
        if row["body_text"] is not None:
            headers = json.loads(row["headers"]) if row["headers"] else {}
            message = RenderedMessage(key, row["recipient"], row["subject"], row["body_text"], row["body_html"], headers)
        return cls(
            row["state"], row["claim_token"], row["provider_message_id"], row["error"], row["lease_seconds_left"], message,
            row["settle_at"], row["blanked_at"],
        )

    def outcome(self, request: MessageRequest) -> MessageOutcome:
        not_before = self.settle_at if self.state == DeliveryState.IN_DOUBT else None
        return _outcome(
            request, DeliveryState(self.state), message_id=self.provider_message_id, error=self.error, not_before=not_before
        )

    def answer(self, request: MessageRequest) -> MessageOutcome | None:
        """The outcome this row already is for `request`; None when the
        request has work to do on it. 'not_permitted' is no answer: consent is
        read again."""
        if self.state in ("sent", "skipped"):
            return self.outcome(request)
        if self.state == "failed" and request.mode is not SendMode.RESEND:
            return self.outcome(request)
        if self.state == "in_doubt" and request.mode is SendMode.SEND:
            return self.outcome(request)
        return None


@dataclass(frozen=True)
class Attempt:
    """This attempt at one message: what each of its steps needs."""

    request: MessageRequest
    # The stored order the message is about; None for the customer's journey.
    order: OrderInput | None
    # As the order recorded them, or for the customer's journey as stored now.
    customer: Customer
    recipient: str
    # None: the outbox.
    provider: Provider | None
    budget: Budget
    # Inside the SMS's quiet hours: when they end. None: it may go now.
    quiet_until: datetime | None = None

    @property
    def message_class(self) -> MessageClass:
        return message_class(self.request.kind)


@dataclass(frozen=True)
class Claim:
    key: str
    token: uuid.UUID
    # None: nothing to recommend, found on a row an earlier attempt left open.
    message: RenderedMessage | None
    # An earlier attempt's request may have arrived: check before sending.
    taken_over: bool = False
    # Claimed from 'in_doubt' once its settle moment came: a look-up tells now.
    settling: bool = False
    # A failed message an operator sends again.
    resend: bool = False
    earlier_error: str | None = None


@dataclass(frozen=True)
class Handover:
    """An outcome PostgreSQL could not take, heartbeated for the next attempt."""

    claim: str
    state: str
    message_id: str | None = None
    error: str | None = None
    # 'in_doubt': seconds until it is due for settling.
    settle_after: float | None = None


def providers_for(config: ProviderConfig) -> dict[Channel, Provider]:
    """The providers the settings configure; a channel without one sends to
    the local outbox. Each keeps its connections until closed."""
    providers: dict[Channel, Provider] = {}
    if config.email_configured:
        providers[Channel.EMAIL] = SendGridEmail(config)
    if config.sms_configured:
        providers[Channel.SMS] = TwilioSms(config)
    return providers


class MessagingActivities:
    def __init__(
        self,
        pool: asyncpg.Pool,
        config: ProviderConfig,
        providers: dict[Channel, Provider] | None = None,
    ) -> None:
        self._pool = pool
        self._providers = providers_for(config) if providers is None else providers
        self._orders: OrderedDict[str, OrderInput] = OrderedDict()
        # Provider requests in flight at once. A send takes a slot before it
        # claims its row, so a claimed row never waits for one.
        self._request_slots = asyncio.Semaphore(config.provider_threads)
        self._request_timeout = config.request_timeout
        self._config = config
        # Channels whose provider rejected our credentials, with the alert.
        self._paused: dict[Channel, str] = {}
        self._alerted: set[str] = set()

    def provider(self, channel: Channel) -> Provider | None:
        """The channel's provider; None: the local outbox."""
        return self._providers.get(channel)

    @property
    def seconds_for_a_send(self) -> float:
        """The longest a claimed send runs: a look-up, the request, recording."""
        return 2 * self._request_seconds + RECORD_RESERVE_SECONDS

    @property
    def _request_seconds(self) -> float:
        """The most a provider request may take (providers.request_limits)."""
        return request_limits(self._request_timeout).total

    @activity.defn
    async def send_message(self, request: MessageRequest) -> MessageOutcome:
        budget = Budget.of_this_attempt()
        quiet_until = _quiet_until(request)
        # A first attempt at a new message skips this read (registering it
        # tells); a retry, a settlement, a resend, or one inside quiet hours
        # (which must not defer a message an earlier attempt may have sent)
        # starts from the row.
        from_the_row = activity.info().attempt > 1 or request.mode is not SendMode.SEND or quiet_until is not None
        # A forgotten customer gets nothing, and nothing is written about
        # them: this worker may hold the order as it was recorded, contact
        # details and all. Whoever reads the customer or the order learns it
        # there; a first attempt holding the order learns it from the first
        # statement it sends: the one that registers a transactional message
        # (REGISTER_IF_PERMITTED), or a marketing one's consent (_refusal).
        if from_the_row and (await self._db(budget, ERASED, request.customer_id) or {}).get("erased"):
            return _not_sent_to_the_erased(request)
        addressee = await self._addressee(request, budget)
        if addressee is None:
            return _not_sent_to_the_erased(request)
        order, customer = addressee
        recipient = customer.email if request.channel is Channel.EMAIL else customer.phone
        if not recipient:
            return _outcome(request, DeliveryState.SKIPPED, error="no recipient for this channel")
        await self._apply_handover(request.key, budget)
        self._refuse_while_paused(request.channel)
        attempt = Attempt(request, order, customer, recipient, self._providers.get(request.channel), budget, quiet_until)
        self._check_an_attempt_can_hold_a_send(attempt)
        row = await self._ledger_row(request.key, budget) if from_the_row else None
        answer = row.answer(request) if row else None
        if answer:
            return answer
        if request.mode is SendMode.SETTLE_WITHOUT_SENDING and (row is None or row.state in ("pending", "not_permitted")):
            return _outcome(request, DeliveryState.SUPERSEDED, error=OVERTAKEN_NOT_SENT)
        if quiet_until is not None and (row is None or row.state in ("pending", "not_permitted")):
            return _deferred_by_quiet_hours(attempt)  # nothing registered or claimed
        async with self._request_slot(attempt):
            return await _finish_even_if_cancelled(self._claim_and_send(attempt, row))

    async def _claim_and_send(self, a: Attempt, row: LedgerRow | None) -> MessageOutcome:
        claim = await self._claim(a, row)
        if isinstance(claim, MessageOutcome):
            return claim
        if claim.message is None:
            return await self._conclude(a, claim, DeliveryState.SKIPPED, error=NOTHING_TO_RECOMMEND)
        if claim.taken_over:
            earlier = await self._check_earlier_request(a, claim)
            if earlier:
                return earlier
            if a.request.mode is SendMode.SETTLE_WITHOUT_SENDING:
                await self._record(a, claim, "pending", error=OVERTAKEN_NOT_SENT)
                return _outcome(a.request, DeliveryState.SUPERSEDED, error=OVERTAKEN_NOT_SENT)
        # Nothing went out (the look-up proved it), and quiet hours forbid a
        # new request now.
        if a.quiet_until is not None:
            await self._record(a, claim, "pending", error=claim.earlier_error)
            return _deferred_by_quiet_hours(a)
        # A look-up proved the earlier request never arrived, or an operator
        # resends a refused one: a new request, so consent is read again.
        if (claim.taken_over and a.provider) or claim.resend:
            refused = await self._refusal(a, claim.message.recipient)
            if refused:
                return await self._conclude(a, claim, DeliveryState.NOT_PERMITTED, error=refused)
        if claim.taken_over:
            await self._db(a.budget, COUNT_ATTEMPT, claim.key, claim.token)
        return await self._send(a, claim)

    async def _claim(self, a: Attempt, row: LedgerRow | None) -> Claim | MessageOutcome:
        """This attempt's claim on the row, or the outcome it already has."""
        key, token = a.request.key, uuid.uuid4()
        # A new transactional message: the statement that registers it reads
        # consent. A marketing one reads it first: nothing is rendered or
        # counted against the cap for a customer who never agreed.
        read_permission = row is None and a.message_class is MessageClass.TRANSACTIONAL
        if not read_permission and (row is None or row.state in ("pending", "not_permitted")):
            # Stored renderings keep their recipient; anything else goes to today's.
            stored = row.message if row and row.state == "pending" else None
            refused = await self._refuse_if_not_permitted(a, stored.recipient if stored else a.recipient)
            if refused:
                return refused
        if row is None or row.state == "not_permitted":
            registered = await self._register(a, token, read_permission=read_permission)
            if registered:
                return registered
            row = await self._ledger_row(key, a.budget)  # another attempt registered it first
            if row.state == "not_permitted":  # and was refused, just now
                return row.outcome(a.request)
        answer = row.answer(a.request)
        if answer:
            return answer
        message = row.message or await self._render(a)
        if row.state == "pending":
            claimed = await self._db(a.budget, CLAIM_PENDING, key, token, a.budget.left())
            if not claimed:
                raise _claim_held(key)
            return Claim(key, token, message)
        if row.state in ("in_doubt", "failed"):  # settling it, or an operator's resend
            if row.blanked_at is not None:
                raise _rendering_removed(key, row.blanked_at)
            claimed = await self._db(a.budget, CLAIM_SETTLED, key, token, a.budget.left(), row.state)
            if not claimed:
                raise _claim_held(key)
            doubt = row.state == "in_doubt"
            return Claim(key, token, message, taken_over=doubt, settling=doubt, resend=not doubt, earlier_error=row.error)
        if row.lease_seconds_left > 0:
            raise _claim_held(key, row.lease_seconds_left)
        taken = await self._db(a.budget, TAKE_OVER, key, token, a.budget.left(), row.claim_token)
        if not taken:
            raise _claim_held(key)
        return Claim(key, token, message, taken_over=True, earlier_error=row.error)

    async def _refuse_if_not_permitted(self, a: Attempt, recipient: str) -> MessageOutcome | None:
        """NOT_PERMITTED, recorded in the ledger, when consent or the
        suppression list forbids this message now; None when it may go."""
        reason = await self._refusal(a, recipient)
        if reason is None:
            return None
        if reason == CUSTOMER_ERASED:  # no row of theirs is written
            return _not_sent_to_the_erased(a.request)
        recorded = await self._db(a.budget, REFUSE, *self._row_identity(a), reason)
        return await self._refused(a, reason, recorded=recorded is not None)

    async def _refused(self, a: Attempt, reason: str, *, recorded: bool) -> MessageOutcome:
        """NOT_PERMITTED for `reason`, once the ledger has it; when the row
        was not `recorded`, the outcome of the row as another attempt left it."""
        if not recorded:  # another attempt registered or claimed it meanwhile
            row = await self._ledger_row(a.request.key, a.budget)
            answer = row.answer(a.request) if row else None
            if answer:
                return answer
            raise _claim_held(a.request.key, row.lease_seconds_left if row else 0)
        log.info("%s not sent: %s", a.request.key, reason)
        return _outcome(a.request, DeliveryState.NOT_PERMITTED, error=reason)

    async def _refusal(self, a: Attempt, recipient: str) -> str | None:
        """Why the customer's consent or the suppression list forbids this
        message to `recipient` now; None when it may go."""
        request = a.request
        async with self._pool.acquire(timeout=a.budget.left()) as conn:
            return await asyncio.wait_for(
                consent.refusal(conn, request.customer_id, a.message_class, request.channel, recipient), a.budget.left()
            )

    def _row_identity(self, a: Attempt) -> tuple[Any, ...]:
        """What a ledger row says about its message, in REGISTER's and REFUSE's order."""
        request = a.request
        return (
            request.key,
            request.order_id,
            request.customer_id,
            a.message_class.value,
            request.kind.value,
            request.channel.value,
            a.recipient,
            a.provider.name if a.provider else "outbox",
        )

    async def _register(self, a: Attempt, token: uuid.UUID, *, read_permission: bool = False) -> Claim | MessageOutcome | None:
        """The new row, claimed by this attempt, or final as 'skipped' when
        there is nothing to send; DEFERRED when the marketing cap is reached;
        NOT_PERMITTED, nothing registered, when the customer was erased since
        this attempt began; None when the row exists already.
        `read_permission` (a transactional message): consent is read by the
        same statement, and a refused message is NOT_PERMITTED, registered
        as REFUSE does, without the rendering made for it."""
        message = await self._render(a)
        values = (
            *self._row_identity(a),
            "sending" if message else "skipped",
            None if message else NOTHING_TO_RECOMMEND,
            message.subject if message else None,
            message.text if message else None,
            message.html if message else None,
            json.dumps(dict(message.headers)) if message and message.headers else None,
            token if message else None,
            a.budget.left() if message else None,
        )
        if message and a.message_class is MessageClass.MARKETING:
            registered = await self._register_within_the_cap(a, values)
        else:
            registered = await self._db(a.budget, REGISTER_IF_PERMITTED if read_permission else REGISTER, *values)
        if registered is None or isinstance(registered, MessageOutcome):
            return registered
        if registered["erased"]:
            return _not_sent_to_the_erased(a.request)
        if read_permission and registered["refusal"] is not None:
            return await self._refused(a, registered["refusal"], recorded=registered["refused"])
        if registered["created_at"] is None:
            return None
        if message is None:
            return _outcome(a.request, DeliveryState.SKIPPED, error=NOTHING_TO_RECOMMEND)
        return Claim(a.request.key, token, message)

    async def _register_within_the_cap(self, a: Attempt, values: tuple[Any, ...]) -> asyncpg.Record | MessageOutcome | None:
        """REGISTER_WITHIN_THE_CAP; DEFERRED when the cap is reached, None
        when another attempt registered the message meanwhile."""
        cap, window = self._config.marketing_cap, self._config.marketing_cap_window
        row = await self._db(a.budget, REGISTER_WITHIN_THE_CAP, *values, window.total_seconds(), cap)
        taken = row["slots"]
        if row["erased"] or len(taken) < cap:
            return row
        if row["registered_meanwhile"]:
            return None
        # A slot frees when enough of the oldest have left the window.
        not_before = taken[len(taken) - cap] + window
        log.info("%s deferred: marketing cap of %d per %s reached", a.request.key, cap, window)
        return _outcome(a.request, DeliveryState.DEFERRED, not_before=not_before)

    async def _check_earlier_request(self, a: Attempt, claim: Claim) -> MessageOutcome | None:
        """An earlier attempt died, or got no answer, after its request may
        have arrived. Its outcome, or None when it surely did not arrive (or
        an operator resends it whatever the provider can tell)."""
        provider = a.provider
        if provider is None:
            return None  # the outbox insert is idempotent
        if provider.visible_after and not claim.settling:
            log.warning(
                "message %s may or may not have reached %s; looked up there in %s", claim.key, provider.title,
                provider.visible_after,
            )
            return await self._leave_in_doubt(a, claim, settle_after=provider.visible_after)
        await self._ensure_time_for_a_request(a, claim, *self._still_unknown(claim))
        try:
            found = await self._request(provider, provider.look_up, claim.message)
        except ProviderFailure as failure:
            return await self._after_failed_look_up(a, provider, claim, failure)
        if not found:
            return None
        log.info("%s already had %s as %s", provider.title, claim.key, found)
        return await self._conclude(a, claim, DeliveryState.SENT, message_id=found)

    async def _after_failed_look_up(
        self, a: Attempt, provider: Provider, claim: Claim, failure: ProviderFailure
    ) -> MessageOutcome | None:
        if failure.verdict in (Verdict.REFUSED, Verdict.OPTED_OUT):  # it can never tell
            if a.request.mode is SendMode.RESEND:
                log.warning("%s cannot tell whether %s arrived (%s); sent again, as asked", provider.title, claim.key, failure)
                return None
            log.error("message %s may or may not have been sent, and %s refused to say: %s", claim.key, provider.title, failure)
            return await self._leave_in_doubt(a, claim, error=str(failure))
        error = ApplicationError(f"{failure} (message look-up)", type="ProviderUnavailable")
        if failure.verdict is Verdict.MISCONFIGURED:
            error = self._pause(a.request.channel, provider, failure)
        state, settle_after = self._still_unknown(claim)
        await self._record(a, claim, state, error=claim.earlier_error, settle_after=settle_after)
        raise error

    @staticmethod
    def _still_unknown(claim: Claim) -> tuple[str, timedelta | None]:
        """How a row is put back when its look-up could not be made: 'in_doubt'
        due at once if it was being settled, else 'sending' for the next attempt."""
        return ("in_doubt", timedelta(0)) if claim.settling else ("sending", None)

    async def _leave_in_doubt(
        self, a: Attempt, claim: Claim, *, settle_after: timedelta | None = None, error: str | None = None
    ) -> MessageOutcome:
        """In doubt, to be settled `settle_after` from now; without it, for
        good: the workflow flags it for an operator."""
        error = error or claim.earlier_error
        settle_at = await self._record(a, claim, "in_doubt", error=error, settle_after=settle_after)
        return _outcome(a.request, DeliveryState.IN_DOUBT, error=error, not_before=settle_at)

    async def _send(self, a: Attempt, claim: Claim) -> MessageOutcome:
        await self._ensure_time_for_a_request(a, claim, "pending")
        try:
            if a.provider is None:
                message_id = await self._to_outbox(a.request.channel, claim.message, a.budget)
            else:
                message_id = await self._request(a.provider, a.provider.send, claim.message)
        except ProviderFailure as failure:
            return await self._after_failed_send(a, a.provider, claim, failure)
        return await self._conclude(a, claim, DeliveryState.SENT, message_id=message_id)

    async def _after_failed_send(self, a: Attempt, provider: Provider, claim: Claim, failure: ProviderFailure) -> MessageOutcome:
        if failure.verdict is Verdict.OPTED_OUT:
            log.warning("%s: the recipient of %s opted out (%s); suppressed", provider.title, claim.key, failure)
            await self._suppress(a, provider, claim, failure)
            return await self._conclude(a, claim, DeliveryState.NOT_PERMITTED, error=str(failure))
        if failure.verdict is Verdict.REFUSED:
            log.warning("%s refused %s for good: %s", provider.title, claim.key, failure)
            return await self._conclude(a, claim, DeliveryState.FAILED, error=str(failure))
        if failure.verdict is Verdict.MISCONFIGURED:
            paused = self._pause(a.request.channel, provider, failure)
            await self._record(a, claim, "pending", error=str(failure))
            raise paused
        # May have arrived: the row stays 'sending' so the retry checks before sending.
        state = "sending" if failure.verdict is Verdict.MAY_HAVE_ARRIVED else "pending"
        await self._record(a, claim, state, error=str(failure))
        raise ApplicationError(str(failure), type="ProviderUnavailable")

    async def _suppress(self, a: Attempt, provider: Provider, claim: Claim, failure: ProviderFailure) -> None:
        """Nothing more to a recipient who opted out at the provider. Should
        PostgreSQL be away, the outcome still reaches the ledger (heartbeated)
        and the next message there meets the same refusal and suppresses it."""
        try:
            async with self._pool.acquire(timeout=a.budget.left()) as conn:
                await asyncio.wait_for(
                    consent.suppress(
                        conn, a.request.channel, claim.message.recipient,
                        reason=f"{provider.name} {failure.code}", source="provider",
                    ),
                    a.budget.left(),
                )
        except DATABASE_UNAVAILABLE:
            log.warning("could not record the opt-out of %s's recipient yet: PostgreSQL is unavailable", claim.key)

    async def _ensure_time_for_a_request(
        self, a: Attempt, claim: Claim, otherwise: str, settle_after: timedelta | None = None
    ) -> None:
        """A request starts only if its answer can be recorded within the
        lease; otherwise the row goes back as `otherwise` for the next attempt."""
        if a.budget.left() < self._time_for_a_request(a.provider):
            await self._record(a, claim, otherwise, error=claim.earlier_error, settle_after=settle_after)
            raise ApplicationError(f"too little of this attempt is left to send {claim.key}", type="AttemptTooShort")

    def _time_for_a_request(self, provider: Provider | None) -> float:
        return (self._request_seconds if provider else 0) + RECORD_RESERVE_SECONDS

    def _check_an_attempt_can_hold_a_send(self, a: Attempt) -> None:
        needed = self._time_for_a_request(a.provider)
        if a.budget.total < needed:
            raise self._misconfigured(
                f"a send needs {needed:g} s (twice PROVIDER_TIMEOUT_SECONDS={self._request_timeout:g} for the request, "
                f"then {RECORD_RESERVE_SECONDS:g} s to record the answer), more than the "
                f"{a.budget.total:g} s start_to_close_timeout of send_message: no message is sent"
            )

    @asynccontextmanager
    async def _request_slot(self, a: Attempt) -> AsyncIterator[None]:
        """Taken before the row is claimed: a row claimed while every slot is
        busy would be left in doubt by a worker that died meanwhile."""
        patience = max(a.budget.left() - self._time_for_a_request(a.provider), 0)
        try:
            await asyncio.wait_for(self._request_slots.acquire(), patience)
        except TimeoutError:
            raise ApplicationError("every provider request slot stayed busy", type="ProviderBusy") from None
        try:
            if activity.is_worker_shutdown():  # the next worker sends it; this one is draining
                raise ApplicationError("the worker is shutting down", type="WorkerShuttingDown")
            yield
        finally:
            self._request_slots.release()

    async def _request(self, provider: Provider, call: Callable[..., Awaitable[T]], *args: Any) -> T:
        """A provider call, on this event loop; any error it raises, whatever
        it is, comes out read as a ProviderFailure. Timed for Prometheus by
        provider, request (send, look_up) and result (ok, or the verdict)."""
        began, result = time.monotonic(), "ok"
        try:
            return await call(*args)
        except Exception as err:
            failure = ProviderFailure.of(provider, err)
            result = failure.verdict.name.lower()
            raise failure from None
        finally:
            activity.metric_meter().create_histogram_timedelta(PROVIDER_REQUEST, "Requests to SendGrid and Twilio").record(
                timedelta(seconds=time.monotonic() - began),
                {"provider": provider.name, "request": call.__name__, "result": result},
            )

    async def _conclude(
        self, a: Attempt, claim: Claim, state: DeliveryState, *, message_id: str | None = None, error: str | None = None
    ) -> MessageOutcome:
        await self._record(a, claim, state.value, message_id=message_id, error=error)
        return _outcome(a.request, state, message_id=message_id, error=error)

    async def _record(
        self,
        a: Attempt,
        claim: Claim,
        state: str,
        *,
        message_id: str | None = None,
        error: str | None = None,
        settle_after: timedelta | None = None,
    ) -> datetime | None:
        """Complete the row, if this attempt still holds it; returns when an
        'in_doubt' row is due for settling. While PostgreSQL is away the
        outcome is first heartbeated for the next attempt; then a send, which
        no later attempt could prove, keeps trying while the lease lasts, and
        anything else is left to the next attempt at once."""
        handed_over, delay = False, 0.5
        seconds = settle_after.total_seconds() if settle_after is not None else None
        while True:
            try:
                completed = await self._db(a.budget, COMPLETE, claim.key, claim.token, state, message_id, error, seconds)
                break
            except DATABASE_UNAVAILABLE:
                if not handed_over:
                    activity.heartbeat(asdict(Handover(str(claim.token), state, message_id, error, seconds)))
                    handed_over = True
                if state != DeliveryState.SENT or a.budget.left() < delay:
                    raise ApplicationError(
                        f"PostgreSQL is unavailable; the outcome of {claim.key} goes to the next attempt",
                        type="LedgerUnavailable",
                    ) from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        if not completed:
            log.warning("%s was taken over by another attempt, which records its outcome", claim.key)
            raise ApplicationError(f"another attempt took {claim.key} over", type="ClaimLost")
        return completed["settle_at"]

    async def _apply_handover(self, key: str, budget: Budget) -> None:
        """An earlier attempt heartbeated an outcome PostgreSQL could not take:
        record it, if the row still carries that attempt's claim."""
        details = activity.info().heartbeat_details
        if details:
            handover = Handover(**details[0])
            await self._db(
                budget, COMPLETE, key, uuid.UUID(handover.claim), handover.state, handover.message_id, handover.error,
                handover.settle_after,
            )

    def _refuse_while_paused(self, channel: Channel) -> None:
        """The configuration comes from the environment, so only a restart can
        fix rejected credentials: until then, fail fast without a request."""
        if channel in self._paused:
            raise self._misconfigured(self._paused[channel])

    def _pause(self, channel: Channel, provider: Provider, failure: ProviderFailure) -> ApplicationError:
        self._paused.setdefault(channel, f"{failure}: {provider.sends} are paused until the configuration is fixed")
        return self._misconfigured(self._paused[channel])

    def _misconfigured(self, alert: str, *, error_type: str = "ProviderMisconfigured") -> ApplicationError:
        """One error line per problem per worker process, not a retry storm;
        the workflow flags the order and tries again later."""
        if alert not in self._alerted:
            self._alerted.add(alert)
            log.error("%s", alert)
        return ApplicationError(alert, type=error_type, non_retryable=True)

    async def _render(self, a: Attempt) -> RenderedMessage | None:
        """The message as this attempt would write it; None when there is nothing to recommend."""
        request, order = a.request, a.order
        details: dict[str, Any] = dict(request.details)
        if request.kind is Touchpoint.RECOMMENDATIONS:
            if order is None:
                raise ApplicationError("recommendations follow an order: order_id is required", type="BadRequest", non_retryable=True)
            details["products"] = await recommend(
                self._pool,
                order.customer.customer_id,
                [i.sku for i in order.items],
                sorted({i.category for i in order.items}),
            )
            if not details["products"]:
                return None
        links, headers = self._links(a)
        if request.kind is Touchpoint.FEEDBACK_REQUEST and order is not None:
            details.update(self._feedback_link(order.order_id, details))
        if order is not None:
            content, html_body = render(request.kind, order, details, links)
        else:
            content, html_body = render_for_customer(request.kind, a.customer, details, links)
        text = content.sms if request.channel is Channel.SMS else "\n\n".join(content.paragraphs)
        return RenderedMessage(request.key, a.recipient, content.subject, text, html_body, headers)

    def _links(self, a: Attempt) -> tuple[Links, dict[str, str]]:
        """The signed links of an email (none for an SMS), and the headers they need."""
        if a.request.channel is not Channel.EMAIL:
            return NO_LINKS, {}
        unsubscribe, headers = None, {}
        if a.message_class is MessageClass.MARKETING:
            unsubscribe, headers = self._unsubscribe(a.request.customer_id)
        secret = self._config.unsubscribe_secret
        # Votes are a courtesy: an order's mail goes without them rather than not at all.
        helpful = answer_links.vote_urls(self._config.web_public_url, a.request.key, datetime.now(timezone.utc), secret) if secret else None
        return Links(unsubscribe=unsubscribe, helpful=helpful), headers

    def _feedback_link(self, order_id: str, details: dict[str, Any]) -> dict[str, str]:
        """The feedback page's link, valid until the order's feedback window
        closes (`respond_by`, from the workflow)."""
        secret = self._config.unsubscribe_secret
        if not (secret and details.get("respond_by")):
            return {}
        until = datetime.fromisoformat(details["respond_by"])
        return {"feedback_url": answer_links.feedback_url(self._config.web_public_url, order_id, until, secret)}

    def _unsubscribe(self, customer_id: str) -> tuple[str, dict[str, str]]:
        """The unsubscribe link of a marketing email, and its RFC 8058 headers.
        No marketing email leaves without a working one."""
        secret = self._config.unsubscribe_secret
        if not secret:
            raise self._misconfigured(
                "UNSUBSCRIBE_SECRET is not set: marketing email needs a signed unsubscribe link, so none is sent",
                error_type="UnsubscribeNotConfigured",
            )
        token = unsubscribe_tokens.sign(customer_id, Channel.EMAIL, secret, datetime.now(timezone.utc))
        url = f"{self._config.web_public_url.rstrip('/')}/unsubscribe?token={token}"
        mailto = f"mailto:{self._config.unsubscribe_address}?subject=unsubscribe%20{token}"
        return url, {"List-Unsubscribe": f"<{url}>, <{mailto}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}

    async def _addressee(self, request: MessageRequest, budget: Budget) -> tuple[OrderInput | None, Customer] | None:
        """The order the message is about and its customer as the order
        recorded them; for the customer's journey (no order), the customer as
        stored now: contact details change, so they are read at every send.
        None when what was read says the customer was forgotten."""
        if request.order_id is not None:
            order = await self._recorded_order(request.order_id, budget)
            return (order, order.customer) if order else None
        row = await self._db(budget, CUSTOMER, request.customer_id)
        if row is None:
            raise ApplicationError(f"customer {request.customer_id} is not recorded", type="CustomerNotRecorded")
        if row["erased"]:
            return None
        # Stored from a validated order: not validated again.
        return None, Customer.model_construct(**{k: v for k, v in row.items() if k != "erased"})

    async def _recorded_order(self, order_id: str, budget: Budget) -> OrderInput | None:
        """The order as record_order stored it; None when its customer was
        forgotten. A stored order never changes (a second record of the same
        id is ignored), so the latest ones stay in memory: an order's sends
        often come together (confirmation and payment; a notice by email and
        by SMS)."""
        order = self._orders.get(order_id)
        if order is not None:
            self._orders.move_to_end(order_id)
            return order
        row = await self._db(budget, RECORDED_ORDER, order_id)
        if row is None:
            raise ApplicationError(f"order {order_id} is not recorded", type="OrderNotRecorded")
        if row["erased"]:
            return None
        order = self._orders[order_id] = OrderInput.model_validate_json(row["document"])
        if len(self._orders) > ORDERS_KEPT_IN_MEMORY:
            self._orders.popitem(last=False)
        return order

    async def _ledger_row(self, key: str, budget: Budget) -> LedgerRow | None:
        row = await self._db(budget, LEDGER_ROW, key)
        return LedgerRow.of(key, row) if row else None

    async def _db(self, budget: Budget, query: str, *args: Any) -> asyncpg.Record | None:
        """One statement, the wait for a pooled connection included, bounded by the lease."""
        async with self._pool.acquire(timeout=budget.left()) as conn:
            return await conn.fetchrow(query, *args, timeout=budget.left())

    async def _to_outbox(self, channel: Channel, message: RenderedMessage, budget: Budget) -> str:
        row = await self._db(
            budget,
            OUTBOX_INSERT,
            message.key,
            channel.value,
            message.recipient,
            message.subject if channel is Channel.EMAIL else None,
            message.text,
            json.dumps(dict(message.headers)) if message.headers else None,
        )
        return f"outbox-{row['id']}"


def _quiet_until(request: MessageRequest) -> datetime | None:
    """When the SMS's quiet hours end, if this attempt falls inside them."""
    if request.channel is not Channel.SMS or request.quiet_hours is None:
        return None
    return request.quiet_hours.end(activity.info().current_attempt_scheduled_time)


def _not_sent_to_the_erased(request: MessageRequest) -> MessageOutcome:
    log.info("%s not sent: %s", request.key, CUSTOMER_ERASED)
    return _outcome(request, DeliveryState.NOT_PERMITTED, error=CUSTOMER_ERASED)


def _deferred_by_quiet_hours(a: Attempt) -> MessageOutcome:
    log.info("%s deferred: the customer's quiet hours, until %s", a.request.key, a.quiet_until)
    return _outcome(a.request, DeliveryState.DEFERRED, not_before=a.quiet_until)


def _claim_held(key: str, seconds_left: float = 0) -> ApplicationError:
    """Another attempt holds the row: this one sends nothing, and is retried
    once that attempt's lease has ended."""
    return ApplicationError(
        f"another attempt holds {key}",
        type="ClaimHeld",
        next_retry_delay=timedelta(seconds=seconds_left) if seconds_left > 0 else None,
    )


def _rendering_removed(key: str, blanked_at: datetime) -> ApplicationError:
    """The message as it went out is gone: rendering it again could send something else."""
    return ApplicationError(
        f"{key} cannot be sent again: retention removed its rendering and recipient on {blanked_at:%Y-%m-%d} "
        "(RETENTION_LEDGER_RENDERINGS)",
        type="RenderingRemoved",
        non_retryable=True,
    )


async def _finish_even_if_cancelled(work: Coroutine[Any, Any, T]) -> T:
    """From the claim to the recorded outcome nothing may stop halfway: a
    request left in flight by a cancelled attempt (a worker shutting down),
    or cut off while being written, could land after the retry looked for
    it. So the work, the request on this event loop included, runs to its
    end (within the lease: every step is bounded by it), and its outcome is
    the activity's."""
    task = asyncio.ensure_future(work)
    while True:
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            asyncio.current_task().uncancel()
            if task.done():
                return task.result()


def _outcome(
    request: MessageRequest,
    state: DeliveryState,
    *,
    message_id: str | None = None,
    error: str | None = None,
    not_before: datetime | None = None,
) -> MessageOutcome:
    return MessageOutcome(
        key=request.key, channel=request.channel, state=state, provider_message_id=message_id, error=error,
        not_before=not_before,
    )
