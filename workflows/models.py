"""Every payload that crosses the wire: the published contract for backend
systems (order input, events, status) and the workflow-to-activity messages.

Inputs ignore unknown fields so backends can send extra optional data; JSON
Schemas for the public models come from `orders schema`.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from workflows.clock import is_known_timezone, local_date, quiet_hours_end

TASK_QUEUE = "order-lifecycle"
WORKFLOW_TYPE = "OrderLifecycle"
CUSTOMER_WORKFLOW_TYPE = "CustomerJourney"
CASE_WORKFLOW_TYPE = "CaseWorkflow"


def workflow_id_for(order_id: str) -> str:
    return f"order-{order_id}"


def customer_workflow_id(customer_id: str) -> str:
    return f"customer-{customer_id}"


def case_workflow_id(order_id: str, n: int) -> str:
    return f"case-{order_id}-{n}"


# A pragmatic address check: one @, no spaces, a dotted domain. Full RFC 5322
# validation is the provider's job; this catches what backends get wrong.
EMAIL_PATTERN = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
E164_PATTERN = r"^\+[1-9]\d{6,14}$"

NonEmpty = Annotated[str, Field(min_length=1, max_length=200)]
# Customer ids become workflow ids and the CustomerId search attribute, which
# the server keeps in plain text: an opaque id, never an email or a phone number.
CUSTOMER_ID_PATTERN = r"^[A-Za-z0-9._\-]{1,64}$"
Money = Annotated[Decimal, Field(gt=0, max_digits=15, decimal_places=3)]
CurrencyCode = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
Rating = Annotated[int, Field(ge=1, le=5)]


class WireModel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class MarketingConsent(WireModel):
    """What the customer agreed to at checkout. A channel left out keeps the
    consent already on record; a customer never asked has none."""

    email: bool | None = None
    sms: bool | None = None


class Customer(WireModel):
    # Checked on new orders only (customer_id_problem): orders already running
    # with another shape of id must still load.
    customer_id: Annotated[NonEmpty, Field(json_schema_extra={"pattern": CUSTOMER_ID_PATTERN})]
    name: NonEmpty
    email: Annotated[str, Field(max_length=254)]
    phone: Annotated[str, Field(pattern=E164_PATTERN)] | None = None
    timezone: Annotated[str, Field(max_length=64)] = "UTC"
    marketing_consent: MarketingConsent | None = None

    @field_validator("email")
    @classmethod
    def _email_shape(cls, value: str) -> str:
        if not EMAIL_PATTERN.match(value):
            # The value itself stays out: rejection reasons reach logs and the Web UI.
            raise ValueError("not an email address")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        if not is_known_timezone(value):
            raise ValueError(f"unknown timezone {value!r}; use an IANA name like Europe/Warsaw")
        return value


class Item(WireModel):
    sku: NonEmpty
    name: NonEmpty
    quantity: Annotated[int, Field(gt=0, le=10_000)]
    unit_price: Money
    category: NonEmpty


class PostalAddress(WireModel):
    line1: NonEmpty
    line2: str | None = None
    city: NonEmpty
    postal_code: NonEmpty
    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")]


class AddressDelivery(WireModel):
    method: Literal["address"]
    address: PostalAddress


class LockerDelivery(WireModel):
    method: Literal["locker"]
    locker_id: NonEmpty
    locker_name: str | None = None


class Seller(WireModel):
    seller_id: NonEmpty
    name: NonEmpty
    sends_delivery_day_notice: bool = False


class JourneySettings(WireModel):
    """Delays and deadlines, read from the worker's configuration by the first
    activity so a running order keeps the values it started with."""

    payment_reminder_after: timedelta = timedelta(hours=24)
    payment_deadline: timedelta = timedelta(hours=72)
    dispatch_promised_within: timedelta = timedelta(hours=48)
    # Final deadlines after the apology: not dispatched this long after
    # payment cancels the order with a refund; not delivered this long after
    # the expected day declares the parcel lost.
    dispatch_deadline: timedelta = timedelta(days=7)
    delivery_grace: timedelta = timedelta(days=1)
    delivery_deadline: timedelta = timedelta(days=14)
    locker_pickup_window: timedelta = timedelta(hours=72)
    locker_reminder_before: timedelta = timedelta(hours=24)
    feedback_delay: timedelta = timedelta(days=3)
    recommendations_delay: timedelta = timedelta(days=7)
    feedback_window: timedelta = timedelta(days=14)
    # Providers report a bounce or an undelivered SMS after they took the
    # message: within minutes mostly, up to 72 hours for mail SendGrid keeps
    # retrying. The order stays open this long after its last order message,
    # so that a report of it is still acted on. The worker's configuration
    # gives it (3 days by default); None, as for orders whose first activity
    # ran before it existed: no window.
    report_window: timedelta | None = None
    # A channel whose provider rejects our credentials is tried again this
    # often, instead of a retry storm, until the configuration is fixed.
    paused_channel_retry: timedelta = timedelta(hours=1)
    # No SMS between these local times (since midnight, customer's timezone):
    # it waits for the morning. Equal values turn quiet hours off.
    sms_quiet_from: timedelta = timedelta(hours=21)
    sms_quiet_until: timedelta = timedelta(hours=8)

    @model_validator(mode="after")
    def _ordered(self) -> JourneySettings:
        if self.payment_reminder_after >= self.payment_deadline:
            raise ValueError("payment_reminder_after must be shorter than payment_deadline")
        if self.dispatch_promised_within >= self.dispatch_deadline:
            raise ValueError("dispatch_promised_within must be shorter than dispatch_deadline")
        if self.delivery_grace >= self.delivery_deadline:
            raise ValueError("delivery_grace must be shorter than delivery_deadline")
        if self.locker_reminder_before >= self.locker_pickup_window:
            raise ValueError("locker_reminder_before must be shorter than locker_pickup_window")
        for name in ("sms_quiet_from", "sms_quiet_until"):
            if not timedelta(0) <= getattr(self, name) < timedelta(days=1):
                raise ValueError(f"{name} is a time of day: from 0s up to 24h")
        return self


class OrderInput(WireModel):
    """Workflow input: `temporal workflow start --type OrderLifecycle --input '{...}'`."""

    order_id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._\-]+$")]
    placed_at: datetime
    currency: CurrencyCode
    customer: Customer
    items: Annotated[list[Item], Field(min_length=1, max_length=200)]
    delivery: Annotated[AddressDelivery | LockerDelivery, Field(discriminator="method")]
    seller: Seller
    # A coupon from a loyalty reward or a win-back, redeemed by this order.
    coupon_code: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    # Optional per-order delays and deadlines (demos, express orders); the
    # worker's configured values apply when it is absent.
    journey: JourneySettings | None = None

    @field_validator("placed_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("placed_at needs a UTC offset, e.g. 2026-11-22T10:00:00Z")
        return value

    @property
    def total(self) -> Decimal:
        return sum((item.unit_price * item.quantity for item in self.items), Decimal("0"))


# --- Events (signals, or the `apply_event` update) -------------------------


class PaymentReceived(WireModel):
    payment_id: NonEmpty
    amount: Money
    currency: CurrencyCode


class OrderDispatched(WireModel):
    carrier: NonEmpty
    tracking_number: NonEmpty
    expected_delivery: date
    tracking_url: Annotated[str, Field(max_length=500, pattern=r"^https?://")] | None = None


class OutForDelivery(WireModel):
    date: date


class OrderDelivered(WireModel):
    delivered_at: datetime
    locker_pickup_code: Annotated[str, Field(min_length=1, max_length=32)] | None = None

    @field_validator("delivered_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("delivered_at needs a UTC offset")
        return value


class ParcelCollected(WireModel):
    collected_at: datetime | None = None


class OrderCancelled(WireModel):
    reason: Annotated[str, Field(min_length=1, max_length=500)]


class FeedbackSubmitted(WireModel):
    # The items as one; each item not in `item_ratings` gets it.
    item_rating: Rating
    seller_rating: Rating
    comment: Annotated[str, Field(max_length=5000)] | None = None
    # Stars per item, by sku, as the feedback page gives them.
    item_ratings: dict[NonEmpty, Rating] | None = None

    @property
    def lowest_rating(self) -> int:
        """The fewest stars given the seller or any item."""
        return min(self.item_rating, self.seller_rating, *(self.item_ratings or {}).values())


class ComplaintReceived(WireModel):
    """The customer complained (by phone, chat, email...): it opens a case
    (workflows/case_handling.py), whatever stage the order is at."""

    channel: Annotated[str, Field(min_length=1, max_length=40)]
    text: Annotated[str, Field(min_length=1, max_length=5000)]

    def case_trigger_key(self, order_id: str) -> str:
        """The key of the case this complaint opens, from what it says: the
        same complaint again (a backend's retry) opens no second case, whether
        the order's workflow takes it or, once that is over, `orders event`."""
        said = hashlib.sha256(f"{self.channel}\n{self.text}".encode()).hexdigest()[:16]
        return f"{workflow_id_for(order_id)}:complaint-{said}"


EVENT_MODELS: dict[str, type[WireModel]] = {
    "payment_received": PaymentReceived,
    "order_dispatched": OrderDispatched,
    "out_for_delivery": OutForDelivery,
    "order_delivered": OrderDelivered,
    "parcel_collected": ParcelCollected,
    "order_cancelled": OrderCancelled,
    "feedback_submitted": FeedbackSubmitted,
    "complaint_received": ComplaintReceived,
}
EventName = Literal[
    "payment_received",
    "order_dispatched",
    "out_for_delivery",
    "order_delivered",
    "parcel_collected",
    "order_cancelled",
    "feedback_submitted",
    "complaint_received",
]


class EventEnvelope(WireModel):
    """Input of the `apply_event` update: the same events, answered synchronously."""

    event: EventName
    payload: dict[str, Any]


# --- Status ------------------------------------------------------------------


class OrderStatus(StrEnum):
    REJECTED = "rejected"
    AWAITING_PAYMENT = "awaiting_payment"
    PAID = "paid"
    DISPATCHED = "dispatched"
    OUT_FOR_DELIVERY = "out_for_delivery"
    DELIVERED = "delivered"
    FEEDBACK_REQUESTED = "feedback_requested"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    # Not delivered by the final delivery deadline: declared lost.
    LOST = "lost"
    # A second run of an order another run recorded (a finished order's id
    # started again): it ended at once, sending and changing nothing.
    DUPLICATE = "duplicate"

    @property
    def searchable(self) -> OrderStatus:
        """The value kept in the OrderStatus search attribute: the stage an
        operator filters by. Steps within a stage show in the status query and
        the Web UI, and cost no search-attribute upsert."""
        return _STAGE.get(self, self)


_STAGE = {OrderStatus.OUT_FOR_DELIVERY: OrderStatus.DISPATCHED, OrderStatus.FEEDBACK_REQUESTED: OrderStatus.DELIVERED}


class Channel(StrEnum):
    EMAIL = "email"
    SMS = "sms"


class Touchpoint(StrEnum):
    ORDER_CONFIRMATION = "order_confirmation"
    PAYMENT_REMINDER = "payment_reminder"
    PAYMENT_CONFIRMATION = "payment_confirmation"
    ORDER_CANCELLED = "order_cancelled"
    DISPATCH_DELAYED = "dispatch_delayed"
    DISPATCH_NOTICE = "dispatch_notice"
    DELIVERY_DAY = "delivery_day"
    DELIVERY_DELAYED = "delivery_delayed"
    DELIVERY_CONFIRMATION = "delivery_confirmation"
    LOCKER_REMINDER = "locker_reminder"
    FEEDBACK_REQUEST = "feedback_request"
    RECOMMENDATIONS = "recommendations"
    PARCEL_LOST = "parcel_lost"
    # The customer's journey (workflows/customer_journey.py).
    WELCOME = "welcome"
    LOYALTY_REWARD = "loyalty_reward"
    WIN_BACK = "win_back"
    WIN_BACK_REMINDER = "win_back_reminder"
    # Service recovery (workflows/case_handling.py): to the customer...
    CASE_ACKNOWLEDGEMENT = "case_acknowledgement"
    CASE_OUTCOME = "case_outcome"
    # ...and to staff, by email only (activities/staff_mail.py).
    CASE_ASSIGNED = "case_assigned"
    CASE_ESCALATED = "case_escalated"


class MessageClass(StrEnum):
    # About an order the customer placed: always sent, except to a suppressed
    # address or number.
    TRANSACTIONAL = "transactional"
    # Offers and suggestions: only with the customer's consent on that channel.
    MARKETING = "marketing"


MARKETING_TOUCHPOINTS = frozenset(
    {Touchpoint.RECOMMENDATIONS, Touchpoint.WELCOME, Touchpoint.LOYALTY_REWARD, Touchpoint.WIN_BACK, Touchpoint.WIN_BACK_REMINDER}
)


def message_class(kind: Touchpoint) -> MessageClass:
    return MessageClass.MARKETING if kind in MARKETING_TOUCHPOINTS else MessageClass.TRANSACTIONAL


class DeliveryState(StrEnum):
    SENT = "sent"
    # The provider refused it for good (bad address, unsubscribed number).
    FAILED = "failed"
    # A previous attempt died between claiming the ledger row and recording the
    # provider's answer: it may have gone out, so it is never sent again.
    IN_DOUBT = "in_doubt"
    # Nothing to say (e.g. no recommendations).
    SKIPPED = "skipped"
    # Not allowed on this channel when it was due: no consent for its class,
    # or the address or number is suppressed (opted out, bounced). Read at
    # send time, never captured earlier.
    NOT_PERMITTED = "not_permitted"
    # Not before `not_before`: marketing over the frequency cap, or an SMS
    # inside the customer's quiet hours. Decided by the activity before any
    # request; the workflow waits and sends it then, unless stale.
    DEFERRED = "deferred"
    # Deferred (frequency cap, quiet hours) past the moment it was useful.
    STALE = "stale"
    # Overtaken by the journey before it could go (e.g. "on its way" once the
    # parcel is delivered): not sent late. Decided by the workflow; no ledger row.
    SUPERSEDED = "superseded"
    # The provider took it, then reported that it did not reach the customer
    # (a bounce, a dropped mail, an undelivered SMS): recorded next to the
    # touchpoint's `sent`, and the message goes to the other channel.
    UNDELIVERED = "undelivered"


class TouchpointRecord(WireModel):
    kind: Touchpoint
    channel: Channel
    state: DeliveryState
    at: datetime
    provider_message_id: str | None = None
    error: str | None = None


class RejectedEvent(WireModel):
    event: str
    reason: str
    at: datetime


class HeldEvent(WireModel):
    """An event that came before the one it follows (carriers' feeds arrive
    out of order): held, and applied when that one comes."""

    event: str
    # The event it waits for.
    until: str
    # When it came.
    at: datetime


class EarlyEvent(HeldEvent):
    """A held event as the order keeps it, payload and all."""

    payload: dict[str, Any]


class OrderStatusView(WireModel):
    """Result of the `status` query and of the workflow itself."""

    order_id: str | None
    status: OrderStatus
    needs_attention: bool = False
    attention_reasons: list[str] = []
    cancellation_reason: str | None = None
    rejection_reason: str | None = None
    touchpoints: list[TouchpointRecord] = []
    rejected_events: list[RejectedEvent] = []
    # All rejections, of which `rejected_events` keeps the latest.
    rejected_total: int = 0
    # Events that came before the one they follow, waiting for it.
    held_events: list[HeldEvent] = []
    # Messages waiting for their channel (behind an earlier message or a
    # provider outage).
    queued_messages: list[str] = []


# --- Workflow <-> activity messages -------------------------------------------


class OrderSetup(WireModel):
    settings: JourneySettings
    # Another run recorded the order first ("run <id>", or "an earlier run"):
    # this run is a second start of a finished order and ends at once.
    recorded_by: str | None = None
    # The order's workflow stores its delivery (record_delivery); orders set
    # up before it did replay without.
    stores_delivery: bool = False
    # Set up since pickups missed are recorded (reports/): no patch needed.
    records_pickup_missed: bool = False


class SendMode(StrEnum):
    """What a send_message call may do with its message."""

    # The journey's message: sent once, whatever earlier attempts did. A
    # message an earlier attempt left in doubt comes back IN_DOUBT with the
    # moment it can be settled (`not_before`).
    SEND = "send"
    # At that moment: looked up at the provider, and sent if it has no trace.
    SETTLE = "settle"
    # The same, but the journey has overtaken it: looked up, never sent anew.
    # Also a send withdrawn after an attempt that may have reached the
    # provider: an SMS is looked up at once, a mail left in doubt until then.
    SETTLE_WITHOUT_SENDING = "settle_without_sending"
    # An operator's `orders resend`: a failed or in-doubt message is sent once more.
    RESEND = "resend"


class QuietHours(WireModel):
    """No SMS between `quiet_from` and `quiet_until`, local time in the
    customer's `timezone` (from 21h to 8h spans midnight; equal values: never
    quiet), except on `exempt_on`, a local date: the delivery-day notice goes
    on its day whatever the hour, and keeps quiet hours after it."""

    timezone: str
    quiet_from: timedelta
    quiet_until: timedelta
    exempt_on: date | None = None

    def end(self, moment: datetime) -> datetime | None:
        """When the quiet hours around `moment` end; None: an SMS may go then."""
        if self.exempt_on is not None and local_date(moment, self.timezone) == self.exempt_on:
            return None
        return quiet_hours_end(moment, self.timezone, self.quiet_from, self.quiet_until)


class MessageRequest(WireModel):
    key: str
    kind: Touchpoint
    channel: Channel
    customer_id: str
    # The activity reads the order stored by record_order: the whole order on
    # every send would double the history. None for the customer's journey,
    # whose messages read the customer's stored contact details.
    order_id: str | None = None
    # Event data the template shows (tracking, dates, pickup code, reason...).
    details: dict[str, Any] = {}
    mode: SendMode = SendMode.SEND
    # An SMS's quiet hours: the activity sends none inside them (DEFERRED to
    # their end), whichever attempt it is. None: no quiet hours (an email, an
    # operator's resend, a request from before they were passed).
    quiet_hours: QuietHours | None = None


class MessageOutcome(WireModel):
    key: str
    channel: Channel
    state: DeliveryState
    provider_message_id: str | None = None
    error: str | None = None
    # DEFERRED: the earliest moment the frequency cap or quiet hours allow
    # it. IN_DOUBT: the moment it can be settled (SETTLE); None when it cannot
    # be, for good: the order is flagged for an operator.
    not_before: datetime | None = None

    @property
    def awaits_settlement(self) -> bool:
        """In doubt until the provider can show it: settled at `not_before`."""
        return self.state is DeliveryState.IN_DOUBT and self.not_before is not None


class MessageUndelivered(WireModel):
    """Signal `message_undelivered` to `order-{order_id}`, from the HTTP
    service: the provider took the order's message, then reported that it
    did not reach the customer."""

    kind: Touchpoint
    channel: Channel
    # bounced or dropped (email); undelivered or failed (SMS).
    event: Literal["bounced", "dropped", "undelivered", "failed"]
    # The provider's reason, scrubbed of contact data.
    reason: Annotated[str, Field(max_length=300)] | None = None


class CancelRecord(WireModel):
    order_id: str
    reason: str


class DeliveryRecord(WireModel):
    order_id: str
    # The carrier's clock.
    delivered_at: datetime
    # When the workflow accepted the payment and the dispatch (for the
    # report's times from payment to dispatch to delivery).
    paid_at: datetime | None = None
    dispatched_at: datetime | None = None


class PickupMissedRecord(WireModel):
    order_id: str
    missed_at: datetime


class FeedbackRecord(WireModel):
    order_id: str
    customer_id: str
    seller_id: str
    skus: list[str]
    feedback: FeedbackSubmitted


# --- Service recovery: cases (workflows/case_handling.py) ----------------------

CaseTriggerKind = Literal["low_rating", "not_helpful", "complaint"]


class CaseTrigger(WireModel):
    """What opens a case: store/cases.open_case's arguments."""

    order_id: str
    trigger: CaseTriggerKind
    # What opened it (the order's feedback, a complaint by what it says, a vote's
    # ledger key): the same key again opens no second case.
    trigger_key: str
    # The customer's words, if any.
    text: str | None = None


class CaseOpening(WireModel):
    """A case's workflow input, from store/cases.open_case."""

    case_id: str
    order_id: str
    n: int
    trigger: CaseTriggerKind
    customer_id: str
    seller_id: str
    category: str | None = None
    text: str | None = None
    opened_at: datetime


class CaseStatus(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    ESCALATED = "escalated"
    RESOLVED = "resolved"
    # Ended without a resolution, for the reason in `closed_reason` (its customer erased).
    CLOSED = "closed"


class CaseRouting(WireModel):
    """Who owns a case and who it escalates to (CASE_* settings): captured by
    the case's first activity, so a change never moves a running case."""

    # Owner by seller id, else by category (the order's first item), else the default team.
    by_seller: dict[str, str] = {}
    by_category: dict[str, str] = {}
    default_owner: str = "customer-service@example.com"
    # Not acknowledged within `sla`: escalated to each in turn (team lead,
    # then the next level), each with its own `sla`.
    escalation: list[str] = ["customer-service-lead@example.com", "head-of-customer-service@example.com"]
    sla: timedelta = timedelta(hours=4)
    # Acknowledged but not resolved within this: escalated as well.
    resolve_within: timedelta = timedelta(days=3)
    # Past the last level: the last owner is reminded this often until it is resolved.
    remind_every: timedelta = timedelta(days=1)
    # After the outcome, the customer may answer "not resolved" this long.
    reopen_window: timedelta = timedelta(days=14)

    def owner_for(self, opening: CaseOpening) -> str:
        return self.by_seller.get(opening.seller_id) or self.by_category.get(opening.category or "") or self.default_owner


class CaseAcknowledged(WireModel):
    """Update `case_acknowledged`."""

    by: NonEmpty


class CaseResolved(WireModel):
    """Update `case_resolved`."""

    resolution: Annotated[str, Field(min_length=1, max_length=2000)]
    by: NonEmpty


# Why nothing more goes to a customer forgotten on request (store/erasure.py):
# the ledger's error, the touchpoint's, a message still queued.
CUSTOMER_ERASED = "customer erased"


class ErasureRequest(WireModel):
    """`POST /erasures` (web/erasures.py): forget a customer."""

    customer_id: Annotated[str, Field(pattern=CUSTOMER_ID_PATTERN)]
    # Who asked for it (an operator, a back office): kept in the erasure log.
    requested_by: NonEmpty


class CaseReopenRequested(WireModel):
    """Signal `case_reopen_requested`: "no" to "Was this resolved?"."""

    comment: Annotated[str, Field(max_length=5000)] | None = None


class CaseRecord(WireModel):
    """A case's row in `cases` as it stands after a transition."""

    case_id: str
    status: CaseStatus
    owner: str
    escalation_level: int
    due_at: datetime | None
    acknowledged_at: datetime | None = None
    resolved_at: datetime | None = None
    resolution: str | None = None
    resolved_by: str | None = None
    reopened_at: datetime | None = None
    reopen_comment: str | None = None
    sla_breaches: int = 0
    closed_reason: str | None = None


class CaseView(CaseRecord):
    """Result of a case's `status` query, of its updates and of the workflow."""

    order_id: str
    trigger: CaseTriggerKind
    reopened: bool = False
    timeline: list[str] = []


class StaffNotice(WireModel):
    """A mail about a case to its owner (case_assigned, case_escalated)."""

    key: str
    kind: Touchpoint
    to: str
    opening: CaseOpening
    details: dict[str, Any] = {}


# --- Workflow state, carried over continue-as-new ------------------------------


class QueuedMessage(WireModel):
    kind: Touchpoint
    channel: Channel
    # Event data the template shows (tracking, dates, pickup code, reason...).
    details: dict[str, Any] = {}
    # When the journey handed it to its channel: how stale it is when deferred.
    queued_at: datetime | None = None
    # What makes it one of a kind for a customer (e.g. "loyal"): in its ledger key.
    occasion: str | None = None
    # In doubt: when it is settled (looked up at the provider, sent if not there).
    settle_at: datetime | None = None
    # A send attempt may have reached the provider (none has proved
    # otherwise): overtaken, it is settled without sending, never simply
    # recorded superseded.
    attempted: bool = False


class MessageLanes(BaseModel):
    """A workflow's messages on their way (workflows/lanes.py)."""

    # Per channel, messages waiting for their outcome, in journey order; the
    # first may be in flight.
    queues: dict[Channel, list[QueuedMessage]] = {Channel.EMAIL: [], Channel.SMS: []}
    # Mails left in doubt, each to be settled at its `settle_at`, in order.
    settling: list[QueuedMessage] = []

    @property
    def queued(self) -> list[QueuedMessage]:
        return [m for queue in self.queues.values() for m in queue]


def _lanes_kept_apart(data: Any, *fields: str) -> Any:
    """A state carried over from a run before the lanes were one object."""
    if not isinstance(data, dict) or "lanes" in data or not any(f in data for f in fields):
        return data
    data = dict(data)
    queues: dict[str, list[Any]] = {Channel.EMAIL.value: [], Channel.SMS.value: []}
    for channel, queued in (data.pop("queues", None) or {}).items():
        queues[Channel(channel).value] += queued
    # The customer's journey kept one queue for both channels.
    for message in data.pop("outbox", None) or []:
        queues[QueuedMessage.model_validate(message).channel.value].append(message)
    data["lanes"] = {"queues": queues, "settling": data.pop("settling", None) or []}
    return data


class JourneyState(BaseModel):
    """Everything an order's workflow knows. A run that continues as new hands
    it to the next run, which resumes the journey where this one stood: every
    deadline is a moment in here, never a duration from "now"."""

    order: OrderInput
    setup: OrderSetup | None = None
    status: OrderStatus = OrderStatus.AWAITING_PAYMENT
    # When the first run started: the payment deadlines count from here.
    started_at: datetime
    attention: list[str] = []
    touchpoints: list[TouchpointRecord] = []
    rejected: list[RejectedEvent] = []
    rejected_total: int = 0
    # Set the moment the journey decides to end early (payment or dispatch
    # deadline, cancellation, lost parcel): events it excludes are rejected
    # from then on, even while the decision is still being carried out.
    decision: str | None = None
    cancellation_reason: str | None = None
    # Accepted events, with the workflow time each was accepted.
    payment: PaymentReceived | None = None
    paid_at: datetime | None = None
    dispatch: OrderDispatched | None = None
    dispatched_at: datetime | None = None
    delivery_day: OutForDelivery | None = None
    delivered: OrderDelivered | None = None
    delivered_seen_at: datetime | None = None
    collected: ParcelCollected | None = None
    cancel: OrderCancelled | None = None
    feedback: FeedbackSubmitted | None = None
    feedback_stored: bool = False
    feedback_asked_at: datetime | None = None
    # A locker parcel's pickup deadline passed uncollected, and whether PostgreSQL has it.
    pickup_missed_at: datetime | None = None
    pickup_missed_recorded: bool = False
    # Events that came before the one they follow, in the order they came.
    held: list[EarlyEvent] = []
    # Touchpoints already handed to a channel (each goes once per order).
    notified: list[Touchpoint] = []
    lanes: MessageLanes = MessageLanes()
    # Messages a provider took, kept so one it reports undelivered later can
    # go on the other channel with the same details.
    taken: list[QueuedMessage] = []
    # Reports of undelivered messages that came before the send's outcome.
    undelivered: list[MessageUndelivered] = []
    # Cases to open (a low rating, a complaint), in the order they came.
    cases_owed: list[CaseTrigger] = []

    @model_validator(mode="before")
    @classmethod
    def _older_run(cls, data: Any) -> Any:
        return _lanes_kept_apart(data, "queues", "settling")


# --- The customer's journey (workflows/customer_journey.py) --------------------


class CustomerPhase(StrEnum):
    NEW = "new"  # first order
    ACTIVE = "active"  # a second order, or back without a win-back
    LOYAL = "loyal"  # enough delivered orders or spend within the window
    LAPSED = "lapsed"  # no order for `lapse_after`
    CHURNED = "churned"  # the win-back (or the holdout's wait) ended without an order
    WON_BACK = "won_back"  # ordered again after a win-back message


class CouponTerms(WireModel):
    discount_percent: Annotated[int, Field(ge=1, le=100)] | None = None
    free_shipping: bool = False
    valid_for: timedelta = timedelta(days=30)

    @model_validator(mode="after")
    def _gives_something(self) -> CouponTerms:
        if self.discount_percent is None and not self.free_shipping:
            raise ValueError("a coupon needs discount_percent or free_shipping")
        return self


class LifecycleSettings(WireModel):
    """Read from the worker's configuration (LIFECYCLE_*) when a customer's
    workflow starts, and kept for its life."""

    loyal_after_orders: Annotated[int, Field(ge=1)] = 3
    # Spend within the window that also makes a customer loyal; None: orders only.
    loyal_after_spend: Decimal | None = None
    loyal_window: timedelta = timedelta(days=365)
    lapse_after: timedelta = timedelta(days=90)
    win_back_retry_after: timedelta = timedelta(days=14)
    churn_after: timedelta = timedelta(days=14)
    # Share of lapsed customers who get no win-back, chosen by customer id.
    holdout_share: Annotated[float, Field(ge=0, le=1)] = 0.1
    loyalty_coupon: CouponTerms = CouponTerms(discount_percent=10)
    win_back_coupon: CouponTerms = CouponTerms(discount_percent=15)
    sms_quiet_from: timedelta = timedelta(hours=21)
    sms_quiet_until: timedelta = timedelta(hours=8)


class OrderFacts(WireModel):
    order_id: str
    placed_at: datetime
    total: Decimal
    delivered_at: datetime | None = None
    # placed, delivered, cancelled or lost
    status: str = "placed"


class OrderNews(WireModel):
    """Signal `order_news` to `customer-{id}`: what happened to an order."""

    event: Literal["placed", "delivered", "cancelled", "lost"]
    order: OrderFacts
    coupon_code: str | None = None
    timezone: str = "UTC"
    has_phone: bool = False


class Coupon(WireModel):
    code: str
    terms: CouponTerms
    expires_at: datetime

    def details(self) -> dict[str, Any]:
        return {
            "coupon_code": self.code,
            "discount_percent": self.terms.discount_percent,
            "free_shipping": self.terms.free_shipping,
            "expires_at": self.expires_at.isoformat(),
        }


class CouponRequest(WireModel):
    customer_id: str
    # Once per customer and milestone, e.g. "loyal", "win_back-2".
    milestone: str
    terms: CouponTerms
    issued_at: datetime


class PhaseChange(WireModel):
    customer_id: str
    phase: CustomerPhase
    at: datetime
    # The order that caused it, if any.
    order_id: str | None = None
    # Win-back bookkeeping for `orders lifecycle report`.
    lapse_no: int | None = None
    win_back_group: Literal["treated", "holdout"] | None = None
    coupon_code: str | None = None


class WinBack(BaseModel):
    lapse_no: int
    group: Literal["treated", "holdout"]
    started_at: datetime
    coupon: Coupon | None = None
    attempts: int = 0
    # A win-back message reached the provider: only then is an order "won back".
    sent: bool = False


class CustomerState(BaseModel):
    """Everything a customer's workflow knows, carried over continue-as-new.
    The first run gets it from record_order, built from PostgreSQL, so a
    customer who ordered before this workflow existed starts where they are."""

    customer_id: str
    settings: LifecycleSettings
    phase: CustomerPhase = CustomerPhase.NEW
    phase_since: datetime | None = None
    timezone: str = "UTC"
    has_phone: bool = False
    # Orders still needed: open ones, and delivered ones within the loyalty window.
    orders: dict[str, OrderFacts] = {}
    orders_total: int = 0
    last_order_at: datetime | None = None
    welcomed: bool = False
    loyalty_rewards: int = 0
    lapses: int = 0
    win_back: WinBack | None = None
    won_back_total: int = 0
    # Win-backs the customer ordered again before they went: never sent late.
    overtaken_win_backs: list[str] = []
    lanes: MessageLanes = MessageLanes()
    # Messages of this journey, by ledger key: their latest state.
    messages: dict[str, DeliveryState] = {}
    consent_changes: int = 0
    timeline: list[str] = []
    # News that came in while a run was handing over, for the next run.
    pending_news: list[OrderNews] = []

    @model_validator(mode="before")
    @classmethod
    def _older_run(cls, data: Any) -> Any:
        return _lanes_kept_apart(data, "outbox")

    def starting_input(self) -> dict[str, Any]:
        """The customer's workflow input (its started event, in history):
        fields at their default left out (a new customer's state in three
        quarters of the bytes); the settings in full, as captured now,
        whatever defaults the worker that reads them has."""
        return {**self.model_dump(mode="json", exclude_defaults=True), "settings": self.settings.model_dump(mode="json")}

    def delivered_in_window(self, now: datetime) -> list[OrderFacts]:
        since = now - self.settings.loyal_window
        return [o for o in self.orders.values() if o.delivered_at and o.delivered_at >= since]

    def qualified_phase(self, now: datetime) -> CustomerPhase:
        """What the customer's orders make them: loyal (enough deliveries or
        spend within the loyalty window), active (more than one order) or new."""
        settings, delivered = self.settings, self.delivered_in_window(now)
        spend = sum((o.total for o in delivered), start=Decimal(0))
        enough_spend = settings.loyal_after_spend is not None and spend >= settings.loyal_after_spend
        if len(delivered) >= settings.loyal_after_orders or enough_spend:
            return CustomerPhase.LOYAL
        return CustomerPhase.ACTIVE if self.orders_total > 1 else CustomerPhase.NEW


class CustomerView(WireModel):
    """Result of the `status` query of a customer's workflow."""

    customer_id: str
    phase: CustomerPhase
    phase_since: datetime | None
    # What its SMS keep quiet hours by, and whether SMS can reach them.
    timezone: str
    has_phone: bool
    orders_total: int
    delivered_in_window: int
    loyalty_rewards: int
    lapses: int
    won_back_total: int
    win_back_group: str | None
    messages: dict[str, DeliveryState]
    timeline: list[str]


def customer_id_problem(order: OrderInput) -> str | None:
    """Why a new order's customer id cannot be used, or None."""
    if re.fullmatch(CUSTOMER_ID_PATTERN, order.customer.customer_id):
        return None
    return (
        "customer.customer_id: must be an opaque id (letters, digits, '.', '_', '-', at most 64), "
        "never an email or a phone number: it is stored unencrypted"
    )


# --- the WOCAS report on its schedule (workflows/wocas_report.py) -----------------------

WOCAS_WORKFLOW_TYPE = "WocasReport"


class WocasRequest(WireModel):
    """The schedule's input to each run (WOCAS_PERIOD_DAYS when the worker
    last created or updated the schedule)."""

    period_days: Annotated[int, Field(ge=1, le=366)] = 7


class WocasPeriod(WireModel):
    """The days a run reports on: `days` before `end` (exclusive, 00:00 UTC)."""

    end: datetime
    days: int

    @classmethod
    def ending_on_the_day_of(cls, moment: datetime, days: int) -> WocasPeriod:
        """The period ending at 00:00 UTC of `moment`'s day: the weekly run, a
        retry, a late run and an on-demand run that day all report the same days."""
        return cls(end=moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0), days=days)


class WocasLead(WireModel):
    """A department lead who gets their sections (WOCAS_LEADS)."""

    name: str
    email: str
    sections: list[str]


class WocasBuilt(WireModel):
    """What the build activity did: the folder (None when it could not be
    written) and the leads configured now, each mailed in turn."""

    folder: str | None
    leads: list[WocasLead]


class WocasMail(WireModel):
    period: WocasPeriod
    lead: WocasLead


class WocasOutcome(WireModel):
    """The run's result: the period, its folder, the message id of each lead's
    mail, and the leads whose mail failed for good."""

    period: WocasPeriod
    folder: str | None
    mailed: list[str]
    not_mailed: list[str] = []


# --- retention on its schedule (workflows/retention.py, store/retention.py) -------------

RETENTION_WORKFLOW_TYPE = "RetentionRun"


class RetentionTable(StrEnum):
    """What each rule removes: the ledger's renderings and recipients (the
    rows stay), provider events no longer owed, outbox rows, inbound SMS ids."""

    LEDGER_RENDERINGS = "ledger_renderings"
    PROVIDER_EVENTS = "provider_events"
    OUTBOX = "outbox"
    SMS_KEYWORDS = "sms_keywords"


class RetentionRule(WireModel):
    table: RetentionTable
    keep: timedelta


class RetentionRequest(WireModel):
    """The schedule's input to each run: the policy (RETENTION_*) when the
    worker last created or updated the schedule; rules set to `never` are absent."""

    rules: list[RetentionRule]
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = 1000


class RetentionStep(WireModel):
    """One rule applied: every row of `table` past `cutoff`, `batch_size` at a time."""

    table: RetentionTable
    cutoff: datetime
    batch_size: int


class RetentionCount(WireModel):
    """What a rule removed or blanked (counts only, never a row's content)."""

    table: RetentionTable
    cutoff: datetime
    rows: int


class RetentionOutcome(WireModel):
    counts: list[RetentionCount]
