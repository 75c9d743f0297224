"""OrderLifecycle: one long-lived workflow per order.

Signal and update handlers only validate an event and record that it was
accepted; the `run` coroutine reacts to accepted events in journey order and
does every side effect through activities. A bad payload, an out-of-order or a
duplicate event is recorded as rejected and never fails a workflow task.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any, Callable

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from workflows import search_attributes as sa
    from workflows.clock import end_of_local_day
    from workflows.models import (
        EVENT_MODELS,
        WORKFLOW_TYPE,
        CancelRecord,
        Channel,
        DeliveryState,
        EventEnvelope,
        FeedbackRecord,
        FeedbackSubmitted,
        MessageOutcome,
        MessageRequest,
        OrderCancelled,
        OrderDelivered,
        OrderDispatched,
        OrderInput,
        OrderSetup,
        OrderStatus,
        OrderStatusView,
        OutForDelivery,
        ParcelCollected,
        PaymentReceived,
        RejectedEvent,
        Touchpoint,
        TouchpointRecord,
        WireModel,
    )

# A provider outage is retried for up to a day; after that the message counts
# as failed and the order goes on with a flag rather than waiting forever.
# The gentle backoff keeps a flaky provider (a third of requests refused)
# from delaying a confirmation by minutes, and still backs off to 5 minutes.
SEND_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=1.5,
    maximum_interval=timedelta(minutes=5),
)
SEND_TIMEOUTS = dict(start_to_close_timeout=timedelta(seconds=60), schedule_to_close_timeout=timedelta(days=1))
DB_TIMEOUTS = dict(start_to_close_timeout=timedelta(seconds=30), retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=1)))

# Rejections are kept for operators, but a flood of bad events must not grow
# workflow state without bound.
MAX_REJECTED_KEPT = 50


class EventRejected(Exception):
    pass


def format_validation_error(err: ValidationError) -> str:
    parts = []
    for e in err.errors(include_url=False):
        where = ".".join(str(p) for p in e["loc"]) or "payload"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


@workflow.defn(name=WORKFLOW_TYPE)
class OrderLifecycle:
    @workflow.init
    def __init__(self, raw_order: Any) -> None:
        # Parsed here, not in `run`: signals delivered with the start are
        # handled before `run` begins and need the order to be checked against.
        # The input is taken raw so a malformed order ends the workflow with a
        # reason instead of failing every workflow task on decoding.
        self.order: OrderInput | None = None
        self.rejection_reason: str | None = None
        try:
            self.order = OrderInput.model_validate(raw_order)
        except ValidationError as err:
            self.rejection_reason = format_validation_error(err)
        self.status = OrderStatus.AWAITING_PAYMENT
        self.attention: list[str] = []
        self.touchpoints: list[TouchpointRecord] = []
        self.rejected: list[RejectedEvent] = []
        self.cancellation_reason: str | None = None
        self.setup: OrderSetup | None = None
        # Accepted events, set by handlers and consumed by `run`.
        self.payment: PaymentReceived | None = None
        self.dispatch: OrderDispatched | None = None
        self.delivery_day: OutForDelivery | None = None
        self.delivered: OrderDelivered | None = None
        self.collected: ParcelCollected | None = None
        self.cancel: OrderCancelled | None = None
        self.feedback: FeedbackSubmitted | None = None

    # --- run ------------------------------------------------------------------

    @workflow.run
    async def run(self, raw_order: Any) -> OrderStatusView:
        if self.order is None:
            return self._reject_order()
        order = self.order
        # Attributes given at start are free; upserting costs an action, so
        # only what the starter left out is set here (e.g. `temporal workflow start`).
        given = workflow.info().typed_search_attributes
        missing = [
            update
            for key, update in (
                (sa.ORDER_STATUS, sa.ORDER_STATUS.value_set(self.status.value)),
                (sa.CUSTOMER_ID, sa.CUSTOMER_ID.value_set(order.customer.customer_id)),
                (sa.NEEDS_ATTENTION, sa.NEEDS_ATTENTION.value_set(False)),
            )
            if given.get(key) is None
        ]
        if missing:
            workflow.upsert_search_attributes(missing)
        self.setup = await workflow.execute_activity("record_order", order, result_type=OrderSetup, **DB_TIMEOUTS)
        if order.journey:
            self.setup = self.setup.model_copy(update={"settings": order.journey})
        settings = self.setup.settings
        self._show_details()
        await self._notify(Touchpoint.ORDER_CONFIRMATION, [Channel.EMAIL])

        placed = workflow.now()
        if not await self._wait_until(lambda: self.payment or self.cancel, placed + settings.payment_reminder_after):
            await self._notify(Touchpoint.PAYMENT_REMINDER, [Channel.EMAIL])
            if not await self._wait_until(lambda: self.payment or self.cancel, placed + settings.payment_deadline):
                hours = settings.payment_deadline.total_seconds() / 3600
                return await self._cancel_order(f"payment not received within {hours:g} hours")
        if self.cancel:
            return await self._cancel_order(self.cancel.reason)

        self._transition(OrderStatus.PAID)
        await self._notify(Touchpoint.PAYMENT_CONFIRMATION, [Channel.EMAIL], {"payment_id": self.payment.payment_id})

        promised = workflow.now() + settings.dispatch_promised_within
        if not await self._wait_until(lambda: self.dispatch or self.cancel, promised):
            self._flag("dispatch_late")
            await self._notify(Touchpoint.DISPATCH_DELAYED, [Channel.EMAIL])
            await workflow.wait_condition(lambda: bool(self.dispatch or self.cancel))
        if self.cancel:
            return await self._cancel_order(self.cancel.reason)

        await self._follow_delivery()
        await self._after_delivery()
        return self.view()

    async def _follow_delivery(self) -> None:
        assert self.order and self.setup and self.dispatch
        dispatch = self.dispatch
        self._transition(OrderStatus.DISPATCHED)
        await self._notify(Touchpoint.DISPATCH_NOTICE, [Channel.EMAIL, Channel.SMS], dispatch.model_dump(mode="json"))

        due = end_of_local_day(dispatch.expected_delivery, self.order.customer.timezone)
        # One timer for the whole wait: a timer per loop pass would bill again
        # for the same deadline after every out-for-delivery notice.
        deadline = asyncio.create_task(self._sleep_until(due + self.setup.settings.delivery_grace))
        delivery_day_handled = late_handled = False
        while not self.delivered:
            pending_notice = lambda: self.delivery_day is not None and not delivery_day_handled  # noqa: E731
            newly_late = lambda: deadline.done() and not late_handled  # noqa: E731
            await workflow.wait_condition(lambda: bool(self.delivered or pending_notice() or newly_late()))
            if self.delivered:
                break
            if newly_late() and not pending_notice():
                late_handled = True
                self._flag("delivery_late")
                await self._notify(Touchpoint.DELIVERY_DELAYED, [Channel.EMAIL], dispatch.model_dump(mode="json"))
                continue
            if pending_notice():
                delivery_day_handled = True
                self._transition(OrderStatus.OUT_FOR_DELIVERY)
                # Pointless once it has already arrived in the same batch of events.
                if self.order.seller.sends_delivery_day_notice and not self.delivered:
                    await self._notify(
                        Touchpoint.DELIVERY_DAY,
                        [Channel.SMS],
                        dispatch.model_dump(mode="json"),
                    )
        deadline.cancel()

    async def _after_delivery(self) -> None:
        assert self.order and self.setup and self.delivered
        settings = self.setup.settings
        delivered_at = workflow.now()
        self._transition(OrderStatus.DELIVERED)
        details = self.delivered.model_dump(mode="json")
        locker_task = None
        if self.order.delivery.method == "locker":
            pickup_deadline = delivered_at + settings.locker_pickup_window
            details["pickup_deadline"] = pickup_deadline.isoformat()
            locker_task = asyncio.create_task(self._watch_locker(pickup_deadline))
        await self._notify(Touchpoint.DELIVERY_CONFIRMATION, [Channel.EMAIL], details)
        feedback_task = asyncio.create_task(self._keep_feedback())

        await self._sleep_until(delivered_at + settings.feedback_delay)
        feedback_asked_at = workflow.now()
        if self.feedback is None:
            await self._notify(Touchpoint.FEEDBACK_REQUEST, [Channel.EMAIL])
            self._transition(OrderStatus.FEEDBACK_REQUESTED)

        await self._sleep_until(delivered_at + settings.recommendations_delay)
        await self._notify(Touchpoint.RECOMMENDATIONS, [Channel.EMAIL])

        # Feedback that comes late still reaches the seller, within a window.
        await self._wait_until(lambda: self.feedback, feedback_asked_at + settings.feedback_window)
        if self.feedback is None:
            feedback_task.cancel()
        if locker_task:
            await locker_task
        await asyncio.gather(feedback_task, return_exceptions=True)
        await workflow.wait_condition(workflow.all_handlers_finished)
        self._transition(OrderStatus.COMPLETED)

    async def _watch_locker(self, pickup_deadline: datetime) -> None:
        assert self.setup
        reminder_at = pickup_deadline - self.setup.settings.locker_reminder_before
        if await self._wait_until(lambda: self.collected, reminder_at):
            return
        await self._notify(Touchpoint.LOCKER_REMINDER, [Channel.SMS], {"pickup_deadline": pickup_deadline.isoformat()})
        if not await self._wait_until(lambda: self.collected, pickup_deadline):
            self._flag("locker_not_collected")

    async def _keep_feedback(self) -> None:
        assert self.order
        await workflow.wait_condition(lambda: self.feedback is not None)
        assert self.feedback
        await workflow.execute_activity(
            "store_feedback",
            FeedbackRecord(
                order_id=self.order.order_id,
                customer_id=self.order.customer.customer_id,
                seller_id=self.order.seller.seller_id,
                skus=[item.sku for item in self.order.items],
                feedback=self.feedback,
            ),
            **DB_TIMEOUTS,
        )
        # Unhappy customers reach a person, not just a table.
        if min(self.feedback.item_rating, self.feedback.seller_rating) <= 2:
            self._flag("low_rating")

    async def _cancel_order(self, reason: str) -> OrderStatusView:
        assert self.order
        self.cancellation_reason = reason
        await workflow.execute_activity(
            "cancel_order", CancelRecord(order_id=self.order.order_id, reason=reason), **DB_TIMEOUTS
        )
        await self._notify(Touchpoint.ORDER_CANCELLED, [Channel.EMAIL], {"reason": reason})
        self._transition(OrderStatus.CANCELLED)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.view()

    def _reject_order(self) -> OrderStatusView:
        self.status = OrderStatus.REJECTED
        workflow.logger.warning("order rejected: %s", self.rejection_reason)
        workflow.upsert_search_attributes(
            [sa.ORDER_STATUS.value_set(self.status.value), sa.NEEDS_ATTENTION.value_set(True)]
        )
        return self.view()

    # --- messaging --------------------------------------------------------------

    async def _notify(self, kind: Touchpoint, channels: list[Channel], details: dict[str, Any] | None = None) -> None:
        """Send `kind` on each listed channel the customer can receive, or on
        the other channel when none of them can be used. A channel refused for
        good hands over to the other one unless that was already used."""
        queue = [c for c in channels if self._reachable(c)]
        if not queue and self._reachable(self._other_channel(channels[0])):
            queue = [self._other_channel(channels[0])]
        tried: set[Channel] = set()
        while queue:
            channel = queue.pop(0)
            tried.add(channel)
            outcome = await self._send(kind, channel, details or {})
            if outcome.state is DeliveryState.FAILED:
                self._flag(f"message_failed:{kind.value}:{channel.value}")
                other = self._other_channel(channel)
                if other not in tried and other not in queue and self._reachable(other):
                    queue.append(other)
            elif outcome.state is DeliveryState.IN_DOUBT:
                self._flag(f"message_in_doubt:{kind.value}:{channel.value}")
        self._show_details()

    async def _send(self, kind: Touchpoint, channel: Channel, details: dict[str, Any]) -> MessageOutcome:
        assert self.order
        request = MessageRequest(
            key=f"{workflow.info().workflow_id}:{kind.value}:{channel.value}",
            kind=kind,
            channel=channel,
            order_id=self.order.order_id,
            details=details,
        )
        try:
            outcome = await workflow.execute_activity(
                "send_message", request, result_type=MessageOutcome, retry_policy=SEND_RETRY, **SEND_TIMEOUTS
            )
        except ActivityError as err:
            outcome = MessageOutcome(
                key=request.key, channel=channel, state=DeliveryState.FAILED, error=str(err.cause or err)
            )
        self.touchpoints.append(
            TouchpointRecord(
                kind=kind,
                channel=channel,
                state=outcome.state,
                at=workflow.now(),
                provider_message_id=outcome.provider_message_id,
                error=outcome.error,
            )
        )
        return outcome

    def _reachable(self, channel: Channel) -> bool:
        assert self.order and self.setup
        if channel is Channel.SMS:
            return self.order.customer.phone is not None and self.setup.preferences.sms
        return self.setup.preferences.email

    @staticmethod
    def _other_channel(channel: Channel) -> Channel:
        return Channel.SMS if channel is Channel.EMAIL else Channel.EMAIL

    # --- state, search attributes, UI -------------------------------------------

    async def _wait_until(self, condition: Callable[[], Any], deadline: datetime) -> bool:
        """Wait for `condition`; False when `deadline` passes first."""
        remaining = deadline - workflow.now()
        if remaining <= timedelta(0):
            return bool(condition())
        try:
            await workflow.wait_condition(lambda: bool(condition()), timeout=remaining)
        except asyncio.TimeoutError:
            return False
        return True

    async def _sleep_until(self, moment: datetime) -> None:
        remaining = moment - workflow.now()
        if remaining > timedelta(0):
            await workflow.sleep(remaining)

    def _transition(self, status: OrderStatus) -> None:
        if status.searchable is not self.status.searchable:
            workflow.upsert_search_attributes([sa.ORDER_STATUS.value_set(status.searchable.value)])
        self.status = status
        self._show_details()

    def _flag(self, reason: str) -> None:
        if reason in self.attention:
            return
        first = not self.attention
        self.attention.append(reason)
        workflow.logger.warning("order needs attention: %s", reason)
        if first:
            workflow.upsert_search_attributes([sa.NEEDS_ATTENTION.value_set(True)])
        self._show_details()

    def _show_details(self) -> None:
        lines = [f"**{self.status.value}**"]
        if self.attention:
            lines.append(f"⚠ needs attention: {', '.join(self.attention)}")
        for t in self.touchpoints:
            ref = f" `{t.provider_message_id}`" if t.provider_message_id else ""
            lines.append(f"- {t.at:%Y-%m-%d %H:%M} UTC {t.kind.value} by {t.channel.value}: {t.state.value}{ref}")
        if self.rejected:
            lines.append(f"- {len(self.rejected)} rejected event(s), latest: {self.rejected[-1].reason}")
        workflow.set_current_details("\n".join(lines))

    def view(self) -> OrderStatusView:
        return OrderStatusView(
            order_id=self.order.order_id if self.order else None,
            status=self.status,
            needs_attention=bool(self.attention) or self.status is OrderStatus.REJECTED,
            attention_reasons=list(self.attention),
            cancellation_reason=self.cancellation_reason,
            rejection_reason=self.rejection_reason,
            touchpoints=list(self.touchpoints),
            rejected_events=list(self.rejected),
        )

    # --- events -----------------------------------------------------------------

    def _check(self, event: str, raw: Any) -> WireModel:
        """Parse and check an event against what has been accepted so far.
        Raises EventRejected with the reason; changes nothing."""
        model = EVENT_MODELS.get(event)
        if model is None:
            raise EventRejected(f"unknown event {event!r}")
        if self.order is None:
            raise EventRejected("the order was rejected")
        try:
            parsed = model.model_validate(raw)
        except ValidationError as err:
            raise EventRejected(f"malformed {event}: {format_validation_error(err)}") from None
        order = self.order
        if self.status in (OrderStatus.CANCELLED, OrderStatus.COMPLETED):
            raise EventRejected(f"order is already {self.status.value}")
        if isinstance(parsed, PaymentReceived):
            if self.payment:
                raise EventRejected(f"duplicate payment: {self.payment.payment_id} was already received")
            if self.cancel:
                raise EventRejected("order is cancelled")
            if parsed.currency != order.currency or parsed.amount != order.total:
                raise EventRejected(
                    f"payment of {parsed.amount} {parsed.currency} does not match the order total "
                    f"{order.total} {order.currency}"
                )
        elif isinstance(parsed, OrderCancelled):
            if self.cancel:
                raise EventRejected("duplicate cancellation")
            if self.dispatch:
                raise EventRejected("cannot cancel: the order has already been dispatched")
        elif isinstance(parsed, OrderDispatched):
            if self.dispatch:
                raise EventRejected("duplicate dispatch")
            if self.cancel:
                raise EventRejected("order is cancelled")
            if not self.payment:
                raise EventRejected("out of order: dispatched before payment was received")
        elif isinstance(parsed, OutForDelivery):
            if not self.dispatch:
                raise EventRejected("out of order: out for delivery before dispatch")
            if self.delivery_day or self.delivered:
                raise EventRejected("duplicate out_for_delivery")
        elif isinstance(parsed, OrderDelivered):
            if not self.dispatch:
                raise EventRejected("out of order: delivered before dispatch")
            if self.delivered:
                raise EventRejected("duplicate delivery")
            if order.delivery.method == "locker" and not parsed.locker_pickup_code:
                raise EventRejected("locker delivery needs locker_pickup_code")
        elif isinstance(parsed, ParcelCollected):
            if order.delivery.method != "locker":
                raise EventRejected("parcel_collected applies to locker deliveries only")
            if not self.delivered:
                raise EventRejected("out of order: collected before delivery")
            if self.collected:
                raise EventRejected("duplicate parcel_collected")
        elif isinstance(parsed, FeedbackSubmitted):
            if not self.delivered:
                raise EventRejected("out of order: feedback before delivery")
            if self.feedback:
                raise EventRejected("duplicate feedback")
        return parsed

    def _accept(self, parsed: WireModel) -> None:
        field = {
            PaymentReceived: "payment",
            OrderDispatched: "dispatch",
            OutForDelivery: "delivery_day",
            OrderDelivered: "delivered",
            ParcelCollected: "collected",
            OrderCancelled: "cancel",
            FeedbackSubmitted: "feedback",
        }[type(parsed)]
        setattr(self, field, parsed)

    def _on_signal(self, event: str, raw: Any) -> None:
        try:
            self._accept(self._check(event, raw))
        except EventRejected as rejection:
            workflow.logger.warning("rejected %s: %s", event, rejection)
            self.rejected.append(RejectedEvent(event=event, reason=str(rejection), at=workflow.now()))
            del self.rejected[:-MAX_REJECTED_KEPT]
            self._show_details()

    # Payloads are taken as raw JSON values so a malformed one is recorded as
    # rejected rather than dropped by the SDK's decoder.
    @workflow.signal
    def payment_received(self, payload: Any) -> None:
        self._on_signal("payment_received", payload)

    @workflow.signal
    def order_dispatched(self, payload: Any) -> None:
        self._on_signal("order_dispatched", payload)

    @workflow.signal
    def out_for_delivery(self, payload: Any) -> None:
        self._on_signal("out_for_delivery", payload)

    @workflow.signal
    def order_delivered(self, payload: Any) -> None:
        self._on_signal("order_delivered", payload)

    @workflow.signal
    def parcel_collected(self, payload: Any) -> None:
        self._on_signal("parcel_collected", payload)

    @workflow.signal
    def order_cancelled(self, payload: Any) -> None:
        self._on_signal("order_cancelled", payload)

    @workflow.signal
    def feedback_submitted(self, payload: Any) -> None:
        self._on_signal("feedback_submitted", payload)

    @workflow.update
    def apply_event(self, envelope: EventEnvelope) -> OrderStatusView:
        """The same events with a synchronous answer: the validator rejects a bad
        event before it reaches history, and the caller gets the reason."""
        self._accept(self._check(envelope.event, envelope.payload))
        return self.view()

    @apply_event.validator
    def _validate_event(self, envelope: EventEnvelope) -> None:
        try:
            self._check(envelope.event, envelope.payload)
        except EventRejected as rejection:
            raise ValueError(str(rejection)) from None

    @workflow.query
    def status(self) -> OrderStatusView:
        return self.view()
