"""OrderLifecycle: one long-lived workflow per order.

`run` follows the README's journey table, one stage at a time, each waiting
for its event or its deadline. Every deadline is a moment kept in the
journey state, so a run that continues as new picks the journey up where it
stood (workflows/waiting.py). Signal and update handlers only check an event
and record it, or hold it until the event it follows (workflows/order_events.py,
workflows/event_rules.py); `run` reacts to it.

Messages never hold up the journey: `_notify` hands each to the order's
lanes (workflows/lanes.py; the order's side in workflows/order_messages.py).
What the order shows, its flags and search attributes are
workflows/order_view.py.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any, Callable, NamedTuple

from temporalio import workflow
from temporalio.exceptions import ActivityError, FailureError

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from activities.cases import CaseActivities
    from activities.orders import OrderActivities
    from workflows import metrics, waiting
    from workflows.clock import end_of_local_day
    from workflows.event_rules import format_validation_error
    from workflows.models import (
        CUSTOMER_ERASED,
        WORKFLOW_TYPE,
        CancelRecord,
        CaseTrigger,
        DeliveryRecord,
        PickupMissedRecord,
        EventEnvelope,
        FeedbackRecord,
        JourneyState,
        MessageOutcome,
        MessageUndelivered,
        OrderFacts,
        OrderInput,
        OrderNews,
        OrderStatus,
        OrderStatusView,
        Touchpoint,
        customer_id_problem,
        customer_workflow_id,
    )
    from workflows.order_events import OrderEvents
    from workflows.order_messages import OrderMessages
    from workflows.order_view import OrderView
    from workflows.retries import DB_TIMEOUTS
    from workflows.waiting import ContinueAsNewDue, CustomerErased, Deadlines, Waits

# Well below the server's limits (10,240 events suggested, 10,000 signals per
# run), so a flood of events cannot lock an order out of its real ones.
CONTINUE_AS_NEW_AFTER_EVENTS = 4_000
CUSTOMER_ID_CHECK = "customer-id-opaque"
# Patched for orders set up before deliveries were stored, delivered since.
STORE_DELIVERY = "store-delivery"
# Patched on the low-rating path only: an order rated low before ratings
# opened cases replays as it ran (a flag, no case).
LOW_RATING_OPENS_CASE = "low-rating-opens-case"
# Patched where a locker parcel's pickup deadline passes, for orders set up
# before it was recorded: one whose deadline passed before replays as it ran.
RECORD_PICKUP_MISSED = "record-pickup-missed"


class Step(NamedTuple):
    """A step after delivery: when it is due (None: not for this order, or
    done already) and what happens then (None: only the wait ends)."""

    due: Callable[[], datetime | None]
    act: Callable[[], None] | None


@workflow.defn(name=WORKFLOW_TYPE)
class OrderLifecycle:
    @workflow.init
    def __init__(self, raw_input: Any) -> None:
        # Parsed here, not in `run`: signals delivered with the start are
        # handled before `run` begins and need the order to be checked against.
        # The input is taken raw so a malformed order ends the workflow with a
        # reason instead of failing every workflow task on decoding.
        self.state: JourneyState | None = None
        rejection_reason = None
        info = workflow.info()
        if info.continued_run_id:
            self.state = JourneyState.model_validate(raw_input)
        else:
            try:
                order = OrderInput.model_validate(raw_input)
            except ValidationError as err:
                rejection_reason = format_validation_error(err)
            else:
                problem = customer_id_problem(order)
                # Patched: an order started before this check replays as it ran.
                if problem and workflow.patched(CUSTOMER_ID_CHECK):
                    rejection_reason = problem
                else:
                    self.state = JourneyState(order=order, started_at=info.workflow_start_time)
        self._view = OrderView(self.state, rejection_reason)
        self._events = OrderEvents(self.state, self._view)
        if self.state is not None:
            self._messages = OrderMessages(self.state, self._view)
            self._deadlines = Deadlines()
            self._waits = Waits(self._deadlines.timer, self._messages.lanes, lambda: CONTINUE_AS_NEW_AFTER_EVENTS)
        self._customer_news: list[asyncio.Task] = []
        self._pickup_missed_record: asyncio.Task | None = None

    # --- the journey ------------------------------------------------------------

    @workflow.run
    async def run(self, raw_input: Any) -> OrderStatusView:
        if self.state is None:
            return self._view.reject()
        s, lanes = self.state, self._messages.lanes
        self._view.attributes.start()
        lanes.start()
        # Issues no command until a case is owed: histories from before replay.
        cases = asyncio.create_task(self._open_cases())
        try:
            if s.setup is None:
                await self._record_order()
            if s.status is OrderStatus.AWAITING_PAYMENT:
                await self._await_payment()
            if s.status is OrderStatus.PAID:
                await self._await_dispatch()
            if s.status in (OrderStatus.DISPATCHED, OrderStatus.OUT_FOR_DELIVERY):
                await self._await_delivery()
            if s.status in (OrderStatus.DELIVERED, OrderStatus.FEEDBACK_REQUESTED):
                await self._after_delivery()
            # The customer's workflow told and every message sent before the
            # order is over. In this order: once the lanes are idle nothing
            # waits for the server, so no report of a message can come in
            # between and queue a message that would never be sent.
            await asyncio.gather(*self._customer_news)
            await self._waits.until(lanes.idle)
            await self._messages.wait_for_late_reports(self._waits)
            # Every case owed opened (a complaint may come until the end).
            await workflow.wait_condition(lambda: not s.cases_owed)
        except ContinueAsNewDue:
            await waiting.continue_as_new(lanes, self._view.attributes, lambda: s, self._customer_news)
        except CustomerErased:
            # Forgotten: a send already running finishes (the activity refuses
            # it), the rest is recorded as not sent, and the order ends now.
            await lanes.close()
            lanes.drop_queued(CUSTOMER_ERASED)
        await workflow.wait_condition(workflow.all_handlers_finished)
        cases.cancel()
        self._view.attributes.stop()
        return self._view.view()

    async def _record_order(self) -> None:
        s = self.state
        setup = await workflow.execute_activity_method(
            OrderActivities.record_order, args=[s.order, workflow.info().first_execution_run_id], **DB_TIMEOUTS
        )
        if setup.recorded_by:  # a finished order started again: nothing to do
            s.setup = setup
            return self._view.transition(OrderStatus.DUPLICATE)
        if s.order.journey:
            # The order's own delays; the worker's report window unless it has one.
            window = s.order.journey.report_window
            if window is None:
                window = setup.settings.report_window
            setup = setup.model_copy(update={"settings": s.order.journey.model_copy(update={"report_window": window})})
        s.setup = setup
        self._view.show()
        self._notify(Touchpoint.ORDER_CONFIRMATION)

    async def _await_payment(self) -> None:
        s, settings = self.state, self.state.setup.settings
        paid_or_cancelled = lambda: s.payment or s.cancel  # noqa: E731
        if not await self._waits.until(paid_or_cancelled, s.started_at + settings.payment_reminder_after):
            self._notify(Touchpoint.PAYMENT_REMINDER)
            if not await self._waits.until(paid_or_cancelled, s.started_at + settings.payment_deadline):
                metrics.deadline_passed("payment_deadline")
                hours = settings.payment_deadline.total_seconds() / 3600
                return await self._cancel_order(f"payment not received within {hours:g} hours")
        if s.cancel:
            return await self._cancel_order(s.cancel.reason)
        self._deadlines.cancel()
        self._view.transition(OrderStatus.PAID)
        self._notify(Touchpoint.PAYMENT_CONFIRMATION, {"payment_id": s.payment.payment_id})

    async def _await_dispatch(self) -> None:
        s, settings = self.state, self.state.setup.settings
        # A delivery after the payment implies the dispatch.
        dispatched_or_cancelled = lambda: s.dispatch or s.delivered or s.cancel  # noqa: E731
        if not await self._waits.until(dispatched_or_cancelled, s.paid_at + settings.dispatch_promised_within):
            metrics.deadline_passed("dispatch_promised_within")
            self._view.flag("dispatch_late")
            self._notify(Touchpoint.DISPATCH_DELAYED)
            if not await self._waits.until(dispatched_or_cancelled, s.paid_at + settings.dispatch_deadline):
                metrics.deadline_passed("dispatch_deadline")
                days = settings.dispatch_deadline.total_seconds() / 86400
                return await self._cancel_order(f"not dispatched within {days:g} days of payment; a full refund follows")
        if s.cancel:
            return await self._cancel_order(s.cancel.reason)
        self._deadlines.cancel()
        self._view.transition(OrderStatus.DISPATCHED)
        if s.dispatch:  # else delivered already: "on its way" is superseded
            self._notify(Touchpoint.DISPATCH_NOTICE, s.dispatch.model_dump(mode="json"))

    async def _await_delivery(self) -> None:
        s = self.state
        if not s.delivered and not await self._track_parcel():
            return await self._declare_lost()
        self._deadlines.cancel()
        self._view.transition(OrderStatus.DELIVERED)
        self._tell_customer("delivered")
        if s.setup.stores_delivery or workflow.patched(STORE_DELIVERY):
            record = DeliveryRecord(
                order_id=s.order.order_id, delivered_at=s.delivered.delivered_at, paid_at=s.paid_at, dispatched_at=s.dispatched_at
            )
            await workflow.execute_activity_method(OrderActivities.record_delivery, record, **DB_TIMEOUTS)

    async def _track_parcel(self) -> bool:
        """Out for delivery, late: True once delivered, False when the final
        delivery deadline passes first."""
        s, settings = self.state, self.state.setup.settings
        tracking = s.dispatch.model_dump(mode="json")
        expected_by = end_of_local_day(s.dispatch.expected_delivery, s.order.customer.timezone)
        late_at, lost_at = expected_by + settings.delivery_grace, expected_by + settings.delivery_deadline
        news = lambda: s.delivered or (s.delivery_day and s.status is OrderStatus.DISPATCHED)  # noqa: E731
        while not s.delivered:
            if s.delivery_day and s.status is OrderStatus.DISPATCHED:
                self._view.transition(OrderStatus.OUT_FOR_DELIVERY)
                if s.order.seller.sends_delivery_day_notice:
                    self._notify(Touchpoint.DELIVERY_DAY, tracking)
            elif workflow.now() >= lost_at:
                metrics.deadline_passed("delivery_deadline")
                return False
            elif workflow.now() >= late_at and "delivery_late" not in s.attention:
                metrics.deadline_passed("delivery_grace")
                self._view.flag("delivery_late")
                self._notify(Touchpoint.DELIVERY_DELAYED, tracking)
            else:
                next_deadline = lost_at if "delivery_late" in s.attention else late_at
                await self._waits.until(news, next_deadline)
        return True

    async def _after_delivery(self) -> None:
        """Delivered: the confirmation now, then each step after delivery at
        its moment, until none is left."""
        s = self.state
        details = s.delivered.model_dump(mode="json")
        if s.order.delivery.method == "locker":
            details["pickup_deadline"] = self._pickup_deadline().isoformat()
        self._notify(Touchpoint.DELIVERY_CONFIRMATION, details)
        while True:
            if s.feedback and not s.feedback_stored:
                await self._store_feedback()
            awaiting_pickup = self._awaiting_pickup()
            now, moments = workflow.now(), []
            for step in self._steps_after_delivery():
                at = step.due()
                if at is None:
                    continue
                if now < at:
                    moments.append(at)
                elif step.act is not None:
                    step.act()
            if s.pickup_missed_at and not s.pickup_missed_recorded and self._pickup_missed_record is None:
                self._record_pickup_missed()
            if not moments:
                break
            await self._waits.until(
                lambda: (s.feedback and not s.feedback_stored) or (awaiting_pickup and s.collected), min(moments)
            )
        self._deadlines.cancel()
        self._view.transition(OrderStatus.COMPLETED)
        if self._pickup_missed_record:
            await self._pickup_missed_record

    def _steps_after_delivery(self) -> tuple[Step, ...]:
        """The journey table's rows after delivery, in journey order."""
        s, settings = self.state, self.state.setup.settings
        pickup_deadline = self._pickup_deadline()
        return (
            # Locker reminder, `locker_reminder_before` the pickup deadline.
            Step(
                lambda: pickup_deadline - settings.locker_reminder_before
                if self._awaiting_pickup()
                and Touchpoint.LOCKER_REMINDER not in s.notified
                and workflow.now() < pickup_deadline
                else None,
                lambda: self._notify(Touchpoint.LOCKER_REMINDER, {"pickup_deadline": pickup_deadline.isoformat()}),
            ),
            # Not collected by the pickup deadline: flagged.
            Step(lambda: pickup_deadline if self._awaiting_pickup() else None, self._pickup_missed),
            # Feedback request, `feedback_delay` after delivery.
            Step(
                lambda: s.delivered_seen_at + settings.feedback_delay if s.feedback_asked_at is None and not s.feedback else None,
                self._ask_for_feedback,
            ),
            # Recommendations, `recommendations_delay` after delivery.
            Step(
                lambda: s.delivered_seen_at + settings.recommendations_delay
                if Touchpoint.RECOMMENDATIONS not in s.notified
                else None,
                lambda: self._notify(Touchpoint.RECOMMENDATIONS),
            ),
            # Feedback that comes late still reaches the seller, until
            # `feedback_window` after the request.
            Step(
                lambda: s.feedback_asked_at + settings.feedback_window if s.feedback_asked_at and not s.feedback else None,
                None,
            ),
        )

    def _pickup_deadline(self) -> datetime:
        # The carrier's clock, not the moment the event reached us.
        return self.state.delivered.delivered_at + self.state.setup.settings.locker_pickup_window

    def _awaiting_pickup(self) -> bool:
        s = self.state
        return s.order.delivery.method == "locker" and not s.collected and "locker_not_collected" not in s.attention

    def _pickup_missed(self) -> None:
        self.state.pickup_missed_at = workflow.now()
        metrics.deadline_passed("locker_pickup_window")
        self._view.flag("locker_not_collected")

    def _ask_for_feedback(self) -> None:
        s = self.state
        s.feedback_asked_at = workflow.now()
        # The feedback page's link expires when the window closes.
        respond_by = s.feedback_asked_at + s.setup.settings.feedback_window
        self._notify(Touchpoint.FEEDBACK_REQUEST, {"respond_by": respond_by.isoformat()})
        self._view.transition(OrderStatus.FEEDBACK_REQUESTED)

    def _record_pickup_missed(self) -> None:
        """For the WOCAS report's lockers not collected. Not awaited here, so
        that the flag and a completion in the same task cost one upsert; the
        journey awaits it before it ends."""
        s = self.state
        if not (s.setup.records_pickup_missed or workflow.patched(RECORD_PICKUP_MISSED)):
            s.pickup_missed_recorded = True
            return
        record = PickupMissedRecord(order_id=s.order.order_id, missed_at=s.pickup_missed_at)
        self._pickup_missed_record = workflow.start_activity_method(OrderActivities.record_pickup_missed, record, **DB_TIMEOUTS)
        self._pickup_missed_record.add_done_callback(lambda _: setattr(s, "pickup_missed_recorded", True))

    async def _store_feedback(self) -> None:
        s = self.state
        record = FeedbackRecord(
            order_id=s.order.order_id,
            customer_id=s.order.customer.customer_id,
            seller_id=s.order.seller.seller_id,
            skus=[item.sku for item in s.order.items],
            feedback=s.feedback,
        )
        await workflow.execute_activity_method(OrderActivities.store_feedback, record, **DB_TIMEOUTS)
        s.feedback_stored = True
        # Unhappy customers reach a person, not just a table.
        if s.feedback.lowest_rating <= 2:
            self._view.flag("low_rating")
            if workflow.patched(LOW_RATING_OPENS_CASE):
                key = f"{workflow.info().workflow_id}:low_rating"
                s.cases_owed.append(CaseTrigger(order_id=s.order.order_id, trigger="low_rating", trigger_key=key, text=s.feedback.comment))

    async def _open_cases(self) -> None:
        """Each case owed (a low rating, a complaint) opened, one at a time,
        once the order is recorded: the case reads it from PostgreSQL. A state
        carried over continue-as-new opens what it still owes, under the same
        trigger keys, so a case opened just before is found, not opened twice."""
        s = self.state
        while True:
            await workflow.wait_condition(lambda: bool(s.cases_owed) and s.setup is not None)
            try:
                await workflow.execute_activity_method(CaseActivities.open_case, s.cases_owed[0], **DB_TIMEOUTS)
            except ActivityError:
                workflow.logger.error("a case could not be opened for this order")
            s.cases_owed.pop(0)

    async def _cancel_order(self, reason: str) -> None:
        s = self.state
        # Decided now, before the slow part: events this excludes are refused.
        s.decision = f"being cancelled: {reason}"
        s.cancellation_reason = reason
        self._events.release_held()
        self._deadlines.cancel()
        record = CancelRecord(order_id=s.order.order_id, reason=reason)
        await workflow.execute_activity_method(OrderActivities.cancel_order, record, **DB_TIMEOUTS)
        self._notify(Touchpoint.ORDER_CANCELLED, {"reason": reason})
        self._view.transition(OrderStatus.CANCELLED)
        self._tell_customer("cancelled")

    async def _declare_lost(self) -> None:
        s = self.state
        s.decision = "declared lost"
        self._events.release_held()
        self._deadlines.cancel()
        self._view.flag("parcel_lost")
        self._notify(Touchpoint.PARCEL_LOST, s.dispatch.model_dump(mode="json"))
        self._view.transition(OrderStatus.LOST)
        self._tell_customer("lost")

    def _notify(self, kind: Touchpoint, details: dict[str, Any] | None = None) -> None:
        self._messages.notify(kind, details)

    def _tell_customer(self, event: str) -> None:
        """The customer's workflow hears how the order ended up (record_order
        told it the order was placed): one signal, sent without holding up
        the journey, and delivered before this run ends."""
        s = self.state
        facts = OrderFacts(
            order_id=s.order.order_id,
            placed_at=s.order.placed_at,
            total=s.order.total,
            delivered_at=s.delivered.delivered_at if s.delivered else None,
            status=event,
        )
        news = OrderNews(
            event=event, order=facts, timezone=s.order.customer.timezone, has_phone=s.order.customer.phone is not None
        )
        handle = workflow.get_external_workflow_handle(customer_workflow_id(s.order.customer.customer_id))
        self._customer_news.append(asyncio.create_task(self._signal_customer(handle, news)))

    @staticmethod
    async def _signal_customer(handle: workflow.ExternalWorkflowHandle, news: OrderNews) -> None:
        try:
            await handle.signal("order_news", news)
        except FailureError:
            # Terminated by an operator: the customer's next order starts it
            # again from PostgreSQL, where this order is recorded.
            workflow.logger.warning("the customer's workflow is gone; order news not delivered")

    # --- events -----------------------------------------------------------------

    # Payloads are taken as raw JSON values so a malformed one is recorded as
    # rejected rather than dropped by the SDK's decoder.
    @workflow.signal
    def payment_received(self, payload: Any) -> None:
        self._events.on_signal("payment_received", payload)

    @workflow.signal
    def order_dispatched(self, payload: Any) -> None:
        self._events.on_signal("order_dispatched", payload)

    @workflow.signal
    def out_for_delivery(self, payload: Any) -> None:
        self._events.on_signal("out_for_delivery", payload)

    @workflow.signal
    def order_delivered(self, payload: Any) -> None:
        self._events.on_signal("order_delivered", payload)

    @workflow.signal
    def parcel_collected(self, payload: Any) -> None:
        self._events.on_signal("parcel_collected", payload)

    @workflow.signal
    def order_cancelled(self, payload: Any) -> None:
        self._events.on_signal("order_cancelled", payload)

    @workflow.signal
    def feedback_submitted(self, payload: Any) -> None:
        self._events.on_signal("feedback_submitted", payload)

    @workflow.signal
    def complaint_received(self, payload: Any) -> None:
        self._events.on_signal("complaint_received", payload)

    @workflow.signal
    def message_resent(self, outcome: MessageOutcome) -> None:
        """What an operator's `orders resend` of one of this order's messages
        came to (workflows/resend.py): recorded, and its flag lifted once sent."""
        if self.state is None:
            workflow.logger.warning("ignored a message_resent signal about no message of this order")
            return
        self._messages.record_from_outside("message_resent", outcome)

    @workflow.signal
    def message_settled(self, outcome: MessageOutcome) -> None:
        """From the HTTP service: a mail left in doubt for good (Email Activity
        could not tell) that the provider has since reported on, so it had it.
        Only while it is still in doubt here: a repeat changes nothing."""
        if self.state is not None and self._messages.in_doubt(outcome.key):
            self._messages.record_from_outside("message_settled", outcome)

    @workflow.signal
    def message_undelivered(self, raw: Any) -> None:
        """From the HTTP service: a provider reported a message it took as not
        delivered (bounced, dropped, undelivered, failed)."""
        try:
            report = MessageUndelivered.model_validate(raw)
        except ValidationError as err:
            workflow.logger.warning("rejected a message_undelivered report: %d error(s)", err.error_count())
            return
        if self.state is not None:
            self._messages.report_undelivered(report)

    @workflow.signal
    def customer_erased(self, _: Any = None) -> None:
        """The customer was forgotten (store/erasure.py): nothing more is
        sent, and the order ends at its next wait."""
        if self.state is not None:
            self._waits.customer_erased = True

    @workflow.update
    def apply_event(self, envelope: EventEnvelope) -> OrderStatusView:
        """The same events with a synchronous answer: the validator rejects a bad
        event before it reaches history, and the caller gets the reason."""
        return self._events.apply(envelope)

    @apply_event.validator
    def _validate_event(self, envelope: EventEnvelope) -> None:
        self._events.validate(envelope)

    @workflow.query
    def status(self) -> OrderStatusView:
        return self._view.view()
