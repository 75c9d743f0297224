"""OrderLifecycle: one long-lived workflow per order.

`run` follows the README's journey table, one stage at a time. Every wait
ends at a moment kept in the journey state, so a run that continues as new
picks the journey up where it stood. Signal and update handlers only check an
event (workflows/event_rules.py) and record it; `run` reacts to it.

Messages never hold up the journey: `_notify` hands each message to its
channel's lane, and each lane sends its messages in journey order on its
own, so an outage of one provider delays neither the other channel nor the
next step (workflows/channel_policy.py decides channels, fallback and
superseded messages). A mail left in doubt moves to a lane of its own, which
settles it once SendGrid could show it, so that wait holds up no other mail.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any, Callable

from temporalio import workflow
from temporalio.exceptions import FailureError

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from activities.orders import OrderActivities
    from workflows import channel_policy, metrics, sending
    from workflows import search_attributes as sa
    from workflows.clock import end_of_local_day, local_date
    from workflows.retries import DB_TIMEOUTS
    from workflows.event_rules import EventRejected, accept_event, check_event, format_validation_error
    from workflows.models import (
        WORKFLOW_TYPE,
        OrderFacts,
        OrderNews,
        customer_id_problem,
        customer_workflow_id,
        message_class,
        CancelRecord,
        Channel,
        DeliveryState,
        EventEnvelope,
        FeedbackRecord,
        JourneyState,
        MessageClass,
        MessageOutcome,
        MessageRequest,
        MessageUndelivered,
        OrderInput,
        OrderStatus,
        OrderStatusView,
        QueuedMessage,
        RejectedEvent,
        SendMode,
        Touchpoint,
        TouchpointRecord,
    )

# Rejections are kept for operators, but a flood of bad events must not grow
# workflow state without bound.
MAX_REJECTED_KEPT = 50
# Well below the server's limits (10,240 events suggested, 10,000 signals per
# run), so a flood of events cannot lock an order out of its real ones.
CONTINUE_AS_NEW_AFTER_EVENTS = 4_000
CUSTOMER_ID_CHECK = "customer-id-opaque"
REPORT_SETTLES_DOUBT = "report-settles-doubt"


class ContinueAsNewDue(Exception):
    """Raised out of a wait when this run's history is long enough."""


@workflow.defn(name=WORKFLOW_TYPE)
class OrderLifecycle:
    @workflow.init
    def __init__(self, raw_input: Any) -> None:
        # Parsed here, not in `run`: signals delivered with the start are
        # handled before `run` begins and need the order to be checked against.
        # The input is taken raw so a malformed order ends the workflow with a
        # reason instead of failing every workflow task on decoding.
        self.state: JourneyState | None = None
        self.rejection_reason: str | None = None
        info = workflow.info()
        if info.continued_run_id:
            self.state = JourneyState.model_validate(raw_input)
        else:
            try:
                order = OrderInput.model_validate(raw_input)
            except ValidationError as err:
                self.rejection_reason = format_validation_error(err)
            else:
                problem = customer_id_problem(order)
                # Patched: an order started before this check replays as it ran.
                if problem and workflow.patched(CUSTOMER_ID_CHECK):
                    self.rejection_reason = problem
                else:
                    self.state = JourneyState(order=order, started_at=info.workflow_start_time)
        self._attributes = sa.Keeper(sa.ORDER, self._wanted_search_attributes)
        self._lanes: list[asyncio.Task] = []
        self._closing_lanes = False
        self._timers: dict[datetime, asyncio.Task] = {}
        self._customer_news: list[asyncio.Task] = []

    # --- the journey ------------------------------------------------------------

    @workflow.run
    async def run(self, raw_input: Any) -> OrderStatusView:
        if self.state is None:
            return self._reject_order()
        s = self.state
        attributes = asyncio.create_task(self._attributes.keep())
        self._lanes = [asyncio.create_task(self._run_lane(channel)) for channel in Channel]
        self._lanes.append(asyncio.create_task(self._run_settlements()))
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
            # The customer's workflow told and every message settled before the
            # order is over. In this order: once the lanes are idle nothing
            # waits for the server, so no report of a message can come in
            # between and queue a message that would never be sent.
            await asyncio.gather(*self._customer_news)
            await self._wait_until(self._lanes_idle)
            await self._wait_for_late_reports()
        except ContinueAsNewDue:
            await self._continue_as_new()
        await workflow.wait_condition(workflow.all_handlers_finished)
        attributes.cancel()
        self._attributes.flush()
        return self.view()

    async def _wait_for_late_reports(self) -> None:
        """The journey is over; a report of its last order message may still
        come (the cancellation, the lost-parcel notice), and the other channel
        carry it. Open until `report_window` after that message was sent, and
        again after any message a report hands over. For a completed order the
        window has mostly passed already (the feedback request is days before
        the recommendations), so it costs no timer."""
        s = self.state
        window = s.setup.settings.report_window
        if window is None:  # captured before there was a window
            return
        while True:
            last_sent = max(
                (
                    t.at
                    for t in s.touchpoints
                    # A mail in doubt SendGrid may have: its report may come too.
                    if t.state in (DeliveryState.SENT, DeliveryState.IN_DOUBT)
                    and message_class(t.kind) is MessageClass.TRANSACTIONAL
                ),
                default=None,
            )
            if last_sent is None:
                return
            handed_over = await self._wait_until(lambda: not self._lanes_idle(), last_sent + window)
            if not handed_over and self._lanes_idle():
                return
            await self._wait_until(self._lanes_idle)

    async def _record_order(self) -> None:
        s = self.state
        setup = await workflow.execute_activity_method(OrderActivities.record_order, s.order, **DB_TIMEOUTS)
        if s.order.journey:
            # The order's own delays; the worker's report window unless it has one.
            window = s.order.journey.report_window
            if window is None:
                window = setup.settings.report_window
            setup = setup.model_copy(update={"settings": s.order.journey.model_copy(update={"report_window": window})})
        s.setup = setup
        self._show_details()
        self._notify(Touchpoint.ORDER_CONFIRMATION)

    async def _await_payment(self) -> None:
        s, settings = self.state, self.state.setup.settings
        paid_or_cancelled = lambda: s.payment or s.cancel  # noqa: E731
        if not await self._wait_until(paid_or_cancelled, s.started_at + settings.payment_reminder_after):
            self._notify(Touchpoint.PAYMENT_REMINDER)
            if not await self._wait_until(paid_or_cancelled, s.started_at + settings.payment_deadline):
                metrics.deadline_passed("payment_deadline")
                hours = settings.payment_deadline.total_seconds() / 3600
                return await self._cancel_order(f"payment not received within {hours:g} hours")
        if s.cancel:
            return await self._cancel_order(s.cancel.reason)
        self._cancel_timers()
        self._transition(OrderStatus.PAID)
        self._notify(Touchpoint.PAYMENT_CONFIRMATION, {"payment_id": s.payment.payment_id})

    async def _await_dispatch(self) -> None:
        s, settings = self.state, self.state.setup.settings
        dispatched_or_cancelled = lambda: s.dispatch or s.cancel  # noqa: E731
        if not await self._wait_until(dispatched_or_cancelled, s.paid_at + settings.dispatch_promised_within):
            metrics.deadline_passed("dispatch_promised_within")
            self._flag("dispatch_late")
            self._notify(Touchpoint.DISPATCH_DELAYED)
            if not await self._wait_until(dispatched_or_cancelled, s.paid_at + settings.dispatch_deadline):
                metrics.deadline_passed("dispatch_deadline")
                days = settings.dispatch_deadline.total_seconds() / 86400
                return await self._cancel_order(f"not dispatched within {days:g} days of payment; a full refund follows")
        if s.cancel:
            return await self._cancel_order(s.cancel.reason)
        self._cancel_timers()
        self._transition(OrderStatus.DISPATCHED)
        self._notify(Touchpoint.DISPATCH_NOTICE, s.dispatch.model_dump(mode="json"))

    async def _await_delivery(self) -> None:
        s, settings = self.state, self.state.setup.settings
        tracking = s.dispatch.model_dump(mode="json")
        expected_by = end_of_local_day(s.dispatch.expected_delivery, s.order.customer.timezone)
        late_at, lost_at = expected_by + settings.delivery_grace, expected_by + settings.delivery_deadline
        news = lambda: s.delivered or (s.delivery_day and s.status is OrderStatus.DISPATCHED)  # noqa: E731
        while not s.delivered:
            if s.delivery_day and s.status is OrderStatus.DISPATCHED:
                self._transition(OrderStatus.OUT_FOR_DELIVERY)
                if s.order.seller.sends_delivery_day_notice:
                    self._notify(Touchpoint.DELIVERY_DAY, tracking)
            elif workflow.now() >= lost_at:
                metrics.deadline_passed("delivery_deadline")
                return await self._declare_lost()
            elif workflow.now() >= late_at and "delivery_late" not in s.attention:
                metrics.deadline_passed("delivery_grace")
                self._flag("delivery_late")
                self._notify(Touchpoint.DELIVERY_DELAYED, tracking)
            else:
                next_deadline = lost_at if "delivery_late" in s.attention else late_at
                await self._wait_until(news, next_deadline)
        self._cancel_timers()
        self._transition(OrderStatus.DELIVERED)
        self._tell_customer("delivered")

    async def _after_delivery(self) -> None:
        """Delivered: confirmation now, then the locker pickup, feedback and
        recommendations steps, each at its moment, until all are settled."""
        s, settings = self.state, self.state.setup.settings
        locker = s.order.delivery.method == "locker"
        # The carrier's clock, not the moment the event reached us.
        pickup_deadline = s.delivered.delivered_at + settings.locker_pickup_window
        details = s.delivered.model_dump(mode="json")
        if locker:
            details["pickup_deadline"] = pickup_deadline.isoformat()
        self._notify(Touchpoint.DELIVERY_CONFIRMATION, details)
        while True:
            if s.feedback and not s.feedback_stored:
                await self._store_feedback()
            now = workflow.now()
            steps: list[datetime] = []
            awaiting_pickup = locker and not s.collected and "locker_not_collected" not in s.attention
            if awaiting_pickup:
                reminder_at = pickup_deadline - settings.locker_reminder_before
                if now >= pickup_deadline:
                    metrics.deadline_passed("locker_pickup_window")
                    self._flag("locker_not_collected")
                elif now >= reminder_at:
                    self._notify(Touchpoint.LOCKER_REMINDER, {"pickup_deadline": pickup_deadline.isoformat()})
                    steps.append(pickup_deadline)
                else:
                    steps.append(reminder_at)
            feedback_at = s.delivered_seen_at + settings.feedback_delay
            if s.feedback_asked_at is None and not s.feedback:
                if now >= feedback_at:
                    s.feedback_asked_at = now
                    self._notify(Touchpoint.FEEDBACK_REQUEST)
                    self._transition(OrderStatus.FEEDBACK_REQUESTED)
                else:
                    steps.append(feedback_at)
            recommendations_at = s.delivered_seen_at + settings.recommendations_delay
            if Touchpoint.RECOMMENDATIONS not in s.notified:
                if now >= recommendations_at:
                    self._notify(Touchpoint.RECOMMENDATIONS)
                else:
                    steps.append(recommendations_at)
            # Feedback that comes late still reaches the seller, within a window.
            if s.feedback_asked_at and not s.feedback and now < s.feedback_asked_at + settings.feedback_window:
                steps.append(s.feedback_asked_at + settings.feedback_window)
            if not steps:
                break
            await self._wait_until(
                lambda: (s.feedback and not s.feedback_stored) or (awaiting_pickup and s.collected), min(steps)
            )
        self._cancel_timers()
        self._transition(OrderStatus.COMPLETED)

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
        if min(s.feedback.item_rating, s.feedback.seller_rating) <= 2:
            self._flag("low_rating")

    async def _cancel_order(self, reason: str) -> None:
        s = self.state
        # Decided now, before the slow part: events this excludes are refused.
        s.decision = f"being cancelled: {reason}"
        s.cancellation_reason = reason
        self._cancel_timers()
        record = CancelRecord(order_id=s.order.order_id, reason=reason)
        await workflow.execute_activity_method(OrderActivities.cancel_order, record, **DB_TIMEOUTS)
        self._notify(Touchpoint.ORDER_CANCELLED, {"reason": reason})
        self._transition(OrderStatus.CANCELLED)
        self._tell_customer("cancelled")

    async def _declare_lost(self) -> None:
        s = self.state
        s.decision = "declared lost"
        self._cancel_timers()
        self._flag("parcel_lost")
        self._notify(Touchpoint.PARCEL_LOST, s.dispatch.model_dump(mode="json"))
        self._transition(OrderStatus.LOST)
        self._tell_customer("lost")

    def _tell_customer(self, event: str) -> None:
        """The customer's workflow hears how the order ended up (record_order
        told it the order was placed): one signal, sent without holding up
        the journey, and settled before this run ends."""
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

    def _reject_order(self) -> OrderStatusView:
        workflow.logger.warning("order rejected: %s", self.rejection_reason)
        workflow.upsert_search_attributes(
            [sa.ORDER_STATUS.value_set(OrderStatus.REJECTED.value), sa.NEEDS_ATTENTION.value_set(True)]
        )
        return self.view()

    # --- waiting and continuing as new -------------------------------------------

    async def _wait_until(self, condition: Callable[[], Any], deadline: datetime | None = None) -> bool:
        """Wait for `condition`; False once `deadline` passes first. One timer
        per deadline, however often the wait around it wakes. Raises
        ContinueAsNewDue when this run's history has grown long."""
        # Already there, or too late: no timer (each one is billed).
        if condition():
            return True
        if deadline is not None and deadline <= workflow.now():
            return False
        timer = None if deadline is None else self._timer(deadline)
        await workflow.wait_condition(
            lambda: bool(condition())
            or (timer is not None and timer.done())
            or self._continue_as_new_due()
            or self._lane_failure() is not None
        )
        self._raise_lane_failure()
        if condition():
            return True
        if timer is not None and timer.done():
            return False
        raise ContinueAsNewDue

    def _timer(self, moment: datetime) -> asyncio.Task:
        if moment not in self._timers:
            self._timers[moment] = asyncio.create_task(workflow.sleep(moment - workflow.now()))
        return self._timers[moment]

    def _cancel_timers(self) -> None:
        """A stage is over: its deadlines no longer matter."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def _lane_failure(self) -> BaseException | None:
        return next((lane.exception() for lane in self._lanes if lane.done() and not lane.cancelled()), None)

    def _raise_lane_failure(self) -> None:
        """A lane that died (a bug, an undecodable result) fails the workflow
        task, visibly, instead of leaving its messages queued for ever."""
        failure = self._lane_failure()
        if failure is not None:
            raise failure

    @staticmethod
    def _continue_as_new_due() -> bool:
        info = workflow.info()
        return info.get_current_history_length() > CONTINUE_AS_NEW_AFTER_EVENTS or info.is_continue_as_new_suggested()

    async def _continue_as_new(self) -> None:
        """Hand the journey to a fresh run. A send waiting for a retry is
        withdrawn and stays first in its queue; the next run sends it under the
        same ledger key. An attempt already running is let finish."""
        self._closing_lanes = True
        await workflow.wait_condition(lambda: all(lane.done() for lane in self._lanes))
        self._raise_lane_failure()
        await asyncio.gather(*self._customer_news)
        await workflow.wait_condition(workflow.all_handlers_finished)
        self._attributes.flush()
        workflow.continue_as_new(self.state.model_dump(mode="json"))

    # --- messages -----------------------------------------------------------------

    def _notify(self, kind: Touchpoint, details: dict[str, Any] | None = None) -> None:
        """Queue `kind` on its channels, once per order."""
        s = self.state
        if kind in s.notified:
            return
        s.notified.append(kind)
        for channel in channel_policy.channels_for(kind, self._reachable()):
            s.queues[channel].append(
                QueuedMessage(kind=kind, channel=channel, details=details or {}, queued_at=workflow.now())
            )
        self._show_details()

    async def _run_lane(self, channel: Channel) -> None:
        """Send this channel's messages one at a time, in journey order, until
        the run hands over to the next one."""
        queue = self.state.queues[channel]
        while True:
            await workflow.wait_condition(lambda: bool(queue) or self._closing_lanes)
            if self._closing_lanes:
                return
            message = queue[0]
            outcome = await self._deliver(message)
            if outcome is None:  # handed over: the next run sends it
                return
            queue.pop(0)
            metrics.message_settled(message, outcome)
            self._settle(message, outcome)

    async def _run_settlements(self) -> None:
        """Settle the mails an earlier attempt left in doubt, one at a time,
        each at the moment its activity named (when SendGrid's Email Activity
        would show it), until the run hands over to the next one."""
        settling = self.state.settling
        while True:
            await workflow.wait_condition(lambda: bool(settling) or self._closing_lanes)
            if self._closing_lanes:
                return
            message = settling[0]
            if message.settle_at > workflow.now():
                try:
                    await sending.pause_until(message.settle_at, lambda: self._closing_lanes)
                except asyncio.CancelledError:
                    return  # handed over: the next run settles it
            outcome = await self._deliver(message, settle=True)
            if outcome is None:
                return
            settling.pop(0)
            metrics.message_settled(message, outcome)
            self._settle(message, outcome)

    async def _deliver(self, message: QueuedMessage, *, settle: bool = False) -> MessageOutcome | None:
        """Send `message`, unless the journey overtakes it first. A send that
        is overtaken while it waits for a retry is withdrawn; an attempt
        already running is let finish and its outcome kept. Settling a message
        in doubt is withdrawn only by the hand-over; once overtaken, it is
        settled without sending."""
        superseded = MessageOutcome(key=self._key(message), channel=message.channel, state=DeliveryState.SUPERSEDED)
        overtaken = lambda: channel_policy.is_superseded(message.kind, self._progress())  # noqa: E731
        if settle:
            mode = SendMode.SETTLE_WITHOUT_SENDING if overtaken() else SendMode.SETTLE
            withdrawn = lambda: self._closing_lanes  # noqa: E731
        else:
            if overtaken():
                return superseded
            mode, withdrawn = SendMode.SEND, lambda: overtaken() or self._closing_lanes
        sending = asyncio.create_task(self._send(message, withdrawn, mode))
        await workflow.wait_condition(lambda: sending.done() or withdrawn())
        if not sending.done():
            sending.cancel()
        try:
            return await sending
        except asyncio.CancelledError:
            return None if self._closing_lanes else superseded

    async def _send(self, message: QueuedMessage, withdrawn: Callable[[], bool], mode: SendMode) -> MessageOutcome:
        """The activity's outcome; raises CancelledError once `withdrawn`."""
        s = self.state
        request = MessageRequest(
            key=self._key(message),
            kind=message.kind,
            channel=message.channel,
            customer_id=s.order.customer.customer_id,
            order_id=s.order.order_id,
            details=message.details,
            mode=mode,
        )
        settings, tz = s.setup.settings, s.order.customer.timezone
        # The delivery-day notice goes on its day, whatever the hour.
        on_its_day = (
            message.kind is Touchpoint.DELIVERY_DAY
            and s.delivery_day is not None
            and local_date(workflow.now(), tz) == s.delivery_day.date
        )
        return await sending.send(
            request,
            message,
            sending.QuietHours(tz, settings.sms_quiet_from, settings.sms_quiet_until, exempt=on_its_day),
            withdrawn,
            paused_retry=settings.paused_channel_retry,
            on_paused=lambda: self._flag(f"provider_misconfigured:{message.channel.value}"),
        )

    def _settle(self, message: QueuedMessage, outcome: MessageOutcome) -> None:
        s = self.state
        kind, channel = message.kind, message.channel
        s.touchpoints.append(
            TouchpointRecord(
                kind=kind,
                channel=channel,
                state=outcome.state,
                at=workflow.now(),
                provider_message_id=outcome.provider_message_id,
                error=outcome.error,
            )
        )
        # Refused for good, or not allowed there: the other channel may carry it.
        if outcome.state in (DeliveryState.FAILED, DeliveryState.NOT_PERMITTED):
            if outcome.state is DeliveryState.FAILED:
                self._flag(f"message_failed:{kind.value}:{channel.value}")
            self._hand_over(message)
        elif outcome.state is DeliveryState.IN_DOUBT and outcome.not_before is not None:
            # Settled then, off the lane; a report of it waits for that.
            s.settling.append(message.model_copy(update={"settle_at": outcome.not_before}))
        elif outcome.state in (DeliveryState.SENT, DeliveryState.IN_DOUBT):
            if outcome.state is DeliveryState.IN_DOUBT:  # nothing can tell: an operator's
                self._flag(f"message_in_doubt:{kind.value}:{channel.value}")
            s.taken.append(message)
        if s.undelivered:
            self._act_on_undelivered()
        self._show_details()

    def _hand_over(self, message: QueuedMessage) -> None:
        """The other channel carries a message its own channel did not, once:
        not if that channel carries it already, nor after a later message
        went there (it would arrive out of journey order)."""
        s = self.state
        kind, channel = message.kind, message.channel
        used = {t.channel for t in s.touchpoints if t.kind is kind} | {
            m.channel for q in s.queues.values() for m in q if m.kind is kind
        }
        rank = s.notified.index
        later_sent_on = {
            t.channel
            for t in s.touchpoints
            if rank(t.kind) > rank(kind) and t.state in (DeliveryState.SENT, DeliveryState.IN_DOUBT)
        }
        fallback = channel_policy.fallback_for(channel, used, self._reachable())
        if fallback and channel_policy.fallback_overtaken(fallback, later_sent_on):
            metrics.count_message(kind, fallback, DeliveryState.SUPERSEDED)
            s.touchpoints.append(
                TouchpointRecord(kind=kind, channel=fallback, state=DeliveryState.SUPERSEDED, at=workflow.now())
            )
        elif fallback:
            queue = s.queues[fallback]
            at = channel_policy.place_in_journey_order([rank(m.kind) for m in queue], rank(kind))
            queue.insert(at, message.model_copy(update={"channel": fallback}))

    def _act_on_undelivered(self) -> None:
        """Each message reported undelivered is recorded so, flagged, and
        handed to the other channel while still worth sending. A report that
        came before the send's outcome waits for it; a repeat changes nothing."""
        s = self.state
        for report in list(s.undelivered):
            settled = [t.state for t in s.touchpoints if t.kind is report.kind and t.channel is report.channel]
            if not settled:
                continue  # its send has not settled yet: _settle comes back here
            s.undelivered.remove(report)
            taken = next((m for m in s.taken if m.kind is report.kind and m.channel is report.channel), None)
            if taken is None or DeliveryState.UNDELIVERED in settled:
                continue  # it never went, or was reported already
            now = workflow.now()
            # A report proves the provider had a mail left in doubt for good.
            # Patched: an order that heard such a report before replays as it ran.
            if settled[-1] is DeliveryState.IN_DOUBT and workflow.patched(REPORT_SETTLES_DOUBT):
                self._unflag(f"message_in_doubt:{report.kind.value}:{report.channel.value}")
            error = f"{report.event}: {report.reason}" if report.reason else report.event
            metrics.count_message(report.kind, report.channel, DeliveryState.UNDELIVERED)
            s.touchpoints.append(
                TouchpointRecord(kind=report.kind, channel=report.channel, state=DeliveryState.UNDELIVERED, at=now, error=error)
            )
            self._flag(f"message_undelivered:{report.kind.value}:{report.channel.value}")
            if not channel_policy.is_stale_at(now, taken.kind, taken.queued_at, taken.details):
                self._hand_over(taken)

    def _key(self, message: QueuedMessage | TouchpointRecord) -> str:
        return f"{workflow.info().workflow_id}:{message.kind.value}:{message.channel.value}"

    def _lanes_idle(self) -> bool:
        return not any(self.state.queues.values()) and not self.state.settling

    def _progress(self) -> channel_policy.Progress:
        s = self.state
        return channel_policy.Progress(
            status=s.status, parcel_collected=s.collected is not None, feedback_received=s.feedback is not None
        )

    def _reachable(self) -> set[Channel]:
        # Whether the customer allows a channel is read at send time.
        return {Channel.EMAIL, Channel.SMS} if self.state.order.customer.phone else {Channel.EMAIL}

    # --- status, search attributes, Web UI ----------------------------------------

    def _transition(self, status: OrderStatus) -> None:
        self.state.status = status
        self._show_details()

    def _flag(self, reason: str) -> None:
        if reason in self.state.attention:
            return
        self.state.attention.append(reason)
        workflow.logger.warning("order needs attention: %s", reason)
        self._show_details()

    def _unflag(self, reason: str) -> None:
        if reason in self.state.attention:
            self.state.attention.remove(reason)
            self._show_details()

    def _wanted_search_attributes(self) -> dict[Any, Any]:
        s = self.state
        return {
            sa.ORDER_STATUS: s.status.searchable.value,
            sa.CUSTOMER_ID: s.order.customer.customer_id,
            sa.NEEDS_ATTENTION: bool(s.attention),
        }

    def _show_details(self) -> None:
        s = self.state
        lines = [f"**{s.status.value}**"]
        if s.attention:
            lines.append(f"⚠ needs attention: {', '.join(s.attention)}")
        for t in s.touchpoints:
            ref = f" `{t.provider_message_id}`" if t.provider_message_id else ""
            lines.append(f"- {t.at:%Y-%m-%d %H:%M} UTC {t.kind.value} by {t.channel.value}: {t.state.value}{ref}")
        for m in (m for q in s.queues.values() for m in q):
            lines.append(f"- queued: {m.kind.value} by {m.channel.value}")
        for m in s.settling:
            lines.append(f"- in doubt, settled at {m.settle_at:%Y-%m-%d %H:%M:%S} UTC: {m.kind.value} by {m.channel.value}")
        if s.rejected:
            lines.append(f"- {s.rejected_total} rejected event(s), latest: {s.rejected[-1].reason}")
        workflow.set_current_details("\n".join(lines))

    def view(self) -> OrderStatusView:
        s = self.state
        if s is None:
            return OrderStatusView(
                order_id=None, status=OrderStatus.REJECTED, needs_attention=True, rejection_reason=self.rejection_reason
            )
        return OrderStatusView(
            order_id=s.order.order_id,
            status=s.status,
            needs_attention=bool(s.attention),
            attention_reasons=list(s.attention),
            cancellation_reason=s.cancellation_reason,
            touchpoints=list(s.touchpoints),
            rejected_events=list(s.rejected),
            rejected_total=s.rejected_total,
            queued_messages=[f"{m.kind.value}:{m.channel.value}" for q in s.queues.values() for m in q],
        )

    # --- events -----------------------------------------------------------------

    def _on_signal(self, event: str, raw: Any) -> None:
        try:
            accept_event(self.state, check_event(self.state, event, raw, workflow.now()), workflow.now())
        except EventRejected as rejection:
            # The reason stays out of the log: it may quote a backend's free text.
            workflow.logger.warning("rejected a %s event", event)
            metrics.event_rejected(event, rejection.kind, via="signal")
            if self.state is None:
                return
            s = self.state
            s.rejected.append(RejectedEvent(event=event, reason=str(rejection), at=workflow.now()))
            del s.rejected[:-MAX_REJECTED_KEPT]
            s.rejected_total += 1
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

    @workflow.signal
    def message_resent(self, outcome: MessageOutcome) -> None:
        """What an operator's `orders resend` of one of this order's messages
        came to (workflows/resend.py): recorded, and its flag lifted once sent."""
        self._settled_elsewhere("message_resent", outcome)

    @workflow.signal
    def message_settled(self, outcome: MessageOutcome) -> None:
        """From the HTTP service: a mail left in doubt for good (Email Activity
        could not tell) that the provider has since reported on, so it had it.
        Only while it is still in doubt here: a repeat changes nothing."""
        touchpoints = self.state.touchpoints if self.state else []
        latest = next((t.state for t in reversed(touchpoints) if self._key(t) == outcome.key), None)
        if latest is DeliveryState.IN_DOUBT:
            self._settled_elsewhere("message_settled", outcome)

    def _settled_elsewhere(self, signal: str, outcome: MessageOutcome) -> None:
        s, channel = self.state, outcome.channel
        kinds = {f"{workflow.info().workflow_id}:{kind.value}:{channel.value}": kind for kind in Touchpoint}
        kind = kinds.get(outcome.key)
        if s is None or kind is None:
            workflow.logger.warning("ignored a %s signal about no message of this order", signal)
            return
        metrics.count_message(kind, channel, outcome.state)
        s.touchpoints.append(
            TouchpointRecord(
                kind=kind, channel=channel, state=outcome.state, at=workflow.now(),
                provider_message_id=outcome.provider_message_id, error=outcome.error,
            )
        )
        if outcome.state is DeliveryState.SENT:
            self._unflag(f"message_failed:{kind.value}:{channel.value}")
            self._unflag(f"message_in_doubt:{kind.value}:{channel.value}")

    @workflow.signal
    def message_undelivered(self, raw: Any) -> None:
        """From the HTTP service: a provider reported a message it took as not
        delivered (bounced, dropped, undelivered, failed)."""
        try:
            report = MessageUndelivered.model_validate(raw)
        except ValidationError as err:
            workflow.logger.warning("rejected a message_undelivered report: %d error(s)", err.error_count())
            return
        if self.state is None or report in self.state.undelivered:
            return
        self.state.undelivered.append(report)
        self._act_on_undelivered()
        self._show_details()

    @workflow.update
    def apply_event(self, envelope: EventEnvelope) -> OrderStatusView:
        """The same events with a synchronous answer: the validator rejects a bad
        event before it reaches history, and the caller gets the reason."""
        accept_event(self.state, check_event(self.state, envelope.event, envelope.payload, workflow.now()), workflow.now())
        self._show_details()
        return self.view()

    @apply_event.validator
    def _validate_event(self, envelope: EventEnvelope) -> None:
        try:
            check_event(self.state, envelope.event, envelope.payload, workflow.now())
        except EventRejected as rejection:
            metrics.event_rejected(envelope.event, rejection.kind, via="update")
            raise ValueError(str(rejection)) from None

    @workflow.query
    def status(self) -> OrderStatusView:
        return self.view()
