"""An order's messages: what the order tells its lanes (workflows/lanes.py),
and what it keeps of each message.

- Each touchpoint goes once per order, on the channels
  workflows/channel_policy.py gives it; journey order is the order in which
  they were notified.
- SMS keep quiet hours, except the delivery-day notice on its day.
- A message is overtaken as channel_policy.is_superseded says.
- Each outcome becomes a touchpoint, and a flag when an operator must look:
  refused for good, in doubt for good, a provider rejecting our credentials.
- What comes later from outside: a provider's report that a message it took
  did not arrive (recorded, flagged, handed to the other channel while still
  worth sending), its proof that a mail in doubt for good arrived, and what
  an operator's resend came to.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workflows import channel_policy, metrics
    from workflows.lanes import Lanes
    from workflows.ledger_key import LedgerKey
    from workflows.models import (
        Channel,
        DeliveryState,
        JourneyState,
        MessageClass,
        MessageOutcome,
        MessageRequest,
        MessageUndelivered,
        QueuedMessage,
        QuietHours,
        SendMode,
        Touchpoint,
        TouchpointRecord,
        message_class,
    )
    from workflows.order_view import OrderView
    from workflows.waiting import Waits

REPORT_SETTLES_DOUBT = "report-settles-doubt"
REPORT_WAITS_FOR_SETTLEMENT = "report-waits-for-settlement"


class OrderMessages:
    def __init__(self, state: JourneyState, view: OrderView) -> None:
        self._state = state
        self._view = view
        self.lanes = Lanes(state.lanes, self)

    def notify(self, kind: Touchpoint, details: dict | None = None) -> None:
        """Queue `kind` on its channels, once per order."""
        s = self._state
        if kind in s.notified:
            return
        s.notified.append(kind)
        self.lanes.queue(kind, details or {})
        self._view.show()

    # --- what the lanes ask (lanes.Journey) -----------------------------------------

    @property
    def paused_retry(self) -> timedelta:
        return self._state.setup.settings.paused_channel_retry

    def reachable(self) -> set[Channel]:
        return {Channel.EMAIL, Channel.SMS} if self._state.order.customer.phone else {Channel.EMAIL}

    def key(self, message: QueuedMessage | TouchpointRecord) -> str:
        return str(LedgerKey(workflow.info().workflow_id, message.kind, message.channel))

    def request(self, message: QueuedMessage, mode: SendMode) -> MessageRequest:
        s = self._state
        return MessageRequest(
            key=self.key(message),
            kind=message.kind,
            channel=message.channel,
            customer_id=s.order.customer.customer_id,
            order_id=s.order.order_id,
            details=message.details,
            mode=mode,
        )

    def quiet_hours(self, message: QueuedMessage) -> QuietHours:
        s = self._state
        settings = s.setup.settings
        # The delivery-day notice goes on its day, whatever the hour.
        its_day = s.delivery_day.date if message.kind is Touchpoint.DELIVERY_DAY and s.delivery_day else None
        return QuietHours(
            timezone=s.order.customer.timezone,
            quiet_from=settings.sms_quiet_from,
            quiet_until=settings.sms_quiet_until,
            exempt_on=its_day,
        )

    def overtaken(self, message: QueuedMessage) -> bool:
        s = self._state
        progress = channel_policy.Progress(
            status=s.status, parcel_collected=s.collected is not None, feedback_received=s.feedback is not None
        )
        return channel_policy.is_superseded(message.kind, progress)

    def rank(self, message: QueuedMessage) -> int:
        return self._state.notified.index(message.kind)

    def carried_on(self, message: QueuedMessage) -> set[Channel]:
        return {t.channel for t in self._state.touchpoints if t.kind is message.kind}

    def later_sent_on(self, message: QueuedMessage) -> set[Channel]:
        rank = self._state.notified.index
        return {
            t.channel
            for t in self._state.touchpoints
            if rank(t.kind) > rank(message.kind) and t.state in (DeliveryState.SENT, DeliveryState.IN_DOUBT)
        }

    def record(self, message: QueuedMessage, outcome: MessageOutcome) -> None:
        s, kind, channel = self._state, message.kind, message.channel
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
        if outcome.state is DeliveryState.FAILED:
            self._view.flag(f"message_failed:{kind.value}:{channel.value}")
        elif outcome.state in (DeliveryState.SENT, DeliveryState.IN_DOUBT) and not outcome.awaits_settlement:
            if outcome.state is DeliveryState.IN_DOUBT:  # nothing can tell: an operator's
                self._view.flag(f"message_in_doubt:{kind.value}:{channel.value}")
            s.taken.append(message)

    def routed(self) -> None:
        if self._state.undelivered:
            self.act_on_undelivered()
        self._view.show()

    def provider_paused(self, channel: Channel) -> None:
        self._view.flag(f"provider_misconfigured:{channel.value}")

    # --- what comes later from outside ------------------------------------------------

    def act_on_undelivered(self) -> None:
        """Each message reported undelivered is recorded so, flagged, and
        handed to the other channel while still worth sending. A report that
        came before the send's outcome waits for it, as one about a mail
        being settled waits for the settlement; a repeat changes nothing."""
        s = self._state
        for report in list(s.undelivered):
            states = [t.state for t in s.touchpoints if t.kind is report.kind and t.channel is report.channel]
            if not states:
                continue  # no outcome yet: `routed` comes back here
            settling = any(m.kind is report.kind and m.channel is report.channel for m in s.lanes.settling)
            # Patched: an order that dropped such a report before replays as it ran.
            if settling and workflow.patched(REPORT_WAITS_FOR_SETTLEMENT):
                continue  # its settlement's outcome brings `routed` back here
            s.undelivered.remove(report)
            taken = next((m for m in s.taken if m.kind is report.kind and m.channel is report.channel), None)
            if taken is None or DeliveryState.UNDELIVERED in states:
                continue  # it never went, or was reported already
            now = workflow.now()
            # A report proves the provider had a mail left in doubt for good.
            # Patched: an order that heard such a report before replays as it ran.
            if states[-1] is DeliveryState.IN_DOUBT and workflow.patched(REPORT_SETTLES_DOUBT):
                self._view.unflag(f"message_in_doubt:{report.kind.value}:{report.channel.value}")
            error = f"{report.event}: {report.reason}" if report.reason else report.event
            metrics.count_message(report.kind, report.channel, DeliveryState.UNDELIVERED)
            s.touchpoints.append(
                TouchpointRecord(kind=report.kind, channel=report.channel, state=DeliveryState.UNDELIVERED, at=now, error=error)
            )
            self._view.flag(f"message_undelivered:{report.kind.value}:{report.channel.value}")
            if not channel_policy.is_stale_at(now, taken.kind, taken.queued_at, taken.details):
                self.lanes.hand_over(taken)

    async def wait_for_late_reports(self, waits: Waits) -> None:
        """The journey is over; a report of its last order message may still
        come (the cancellation, the lost-parcel notice), and the other channel
        carry it. Open until `report_window` after that message was sent, and
        again after any message a report hands over. For a completed order the
        window has mostly passed already (the feedback request is days before
        the recommendations), so it costs no timer."""
        s, lanes = self._state, self.lanes
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
            handed_over = await waits.until(lambda: not lanes.idle(), last_sent + window)
            if not handed_over and lanes.idle():
                return
            await waits.until(lanes.idle)

    def report_undelivered(self, report: MessageUndelivered) -> None:
        if report in self._state.undelivered:
            return
        self._state.undelivered.append(report)
        self.act_on_undelivered()
        self._view.show()

    def in_doubt(self, key: str) -> bool:
        """The message's latest outcome left it in doubt."""
        latest = next((t.state for t in reversed(self._state.touchpoints) if self.key(t) == key), None)
        return latest is DeliveryState.IN_DOUBT

    def record_from_outside(self, signal: str, outcome: MessageOutcome) -> None:
        """An outcome reached outside the lanes: an operator's resend, or a
        provider's report of a mail in doubt for good. Sent lifts the flags."""
        try:
            key = LedgerKey.parse(outcome.key)
            ours = key == LedgerKey(workflow.info().workflow_id, key.kind, outcome.channel)
        except ValueError:
            ours = False
        if not ours:
            workflow.logger.warning("ignored a %s signal about no message of this order", signal)
            return
        kind, channel = key.kind, outcome.channel
        metrics.count_message(kind, channel, outcome.state)
        self._state.touchpoints.append(
            TouchpointRecord(
                kind=kind, channel=channel, state=outcome.state, at=workflow.now(),
                provider_message_id=outcome.provider_message_id, error=outcome.error,
            )
        )
        if outcome.state is DeliveryState.SENT:
            self._view.unflag(f"message_failed:{kind.value}:{channel.value}")
            self._view.unflag(f"message_in_doubt:{kind.value}:{channel.value}")
