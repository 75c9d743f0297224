"""CustomerJourney: one workflow per customer, `customer-{customer_id}`.

Orders tell it what happened: record_order starts it, or signals it, with
`order_news` "placed" (signal-with-start: one billable action), and the
order's workflow signals "delivered", "cancelled" or "lost" (one more).
Feedback stays with the order and the seller.

Phases (search attribute CustomerPhase): new → active → loyal → lapsed →
churned, and won_back when an order follows a win-back. It sends a welcome
on the first delivered order, a loyalty coupon once, and for a lapse a
win-back with a coupon and one reminder, except to the holdout share.

It lives for years: it continues as new long before its history is large,
carrying its state; it uses one timer per lapse period, however often the
customer orders, since a timer that fires early is simply re-armed.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable
from datetime import datetime, timedelta
from typing import Any, Callable

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from activities.customers import CustomerActivities
    from workflows import channel_policy, metrics, sending
    from workflows import search_attributes as sa
    from workflows.retries import DB_TIMEOUTS
    from workflows.models import (
        CUSTOMER_WORKFLOW_TYPE,
        Channel,
        Coupon,
        CouponRequest,
        CustomerPhase,
        CustomerState,
        CustomerView,
        DeliveryState,
        MessageOutcome,
        MessageRequest,
        OrderNews,
        PhaseChange,
        QueuedMessage,
        SendMode,
        Touchpoint,
        WinBack,
    )

# A customer's history grows by a few events per order: years of orders fit
# in one run, but a flood of signals must not reach the server's limits.
CONTINUE_AS_NEW_AFTER_EVENTS = 2_000
TIMELINE_KEPT = 30
# The provider pause for this journey's few messages.
PAUSED_CHANNEL_RETRY = timedelta(hours=1)


def in_holdout(customer_id: str, share: float) -> bool:
    """The same answer for a customer on every worker and every replay."""
    digest = hashlib.sha256(customer_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


@workflow.defn(name=CUSTOMER_WORKFLOW_TYPE)
class CustomerJourney:
    @workflow.init
    def __init__(self, raw_state: Any) -> None:
        self.state = CustomerState.model_validate(raw_state)
        self._news: list[OrderNews] = self.state.pending_news
        self.state.pending_news = []
        self._attributes = sa.Keeper(sa.CUSTOMER, self._wanted_search_attributes)
        self._closing = False
        # The one pending timer and the moment it fires (see `_wait`).
        self._timer: tuple[datetime, asyncio.Task] | None = None

    @workflow.run
    async def run(self, raw_state: Any) -> None:
        s = self.state
        attributes = asyncio.create_task(self._attributes.keep())
        lane = asyncio.create_task(self._run_lane())
        if workflow.info().continued_run_id is None:  # the phase it starts in, for the report
            await self._record_phase(s.phase)
        self._show()
        while True:
            while self._news:
                await self._on_news(self._news.pop(0))
            step_at = self._next_step_at()
            if step_at is not None and workflow.now() >= step_at:
                await self._step()
                continue
            if self._continue_as_new_due():
                break
            await self._wait(lambda: bool(self._news) or self._continue_as_new_due() or lane.done(), step_at)
            if lane.done():
                lane.result()  # a lane that died fails the task visibly
        # Hand over: a message waiting for its moment stays in the outbox.
        self._closing = True
        await lane
        await workflow.wait_condition(workflow.all_handlers_finished)
        attributes.cancel()
        self._attributes.flush()
        s.pending_news = self._news
        workflow.continue_as_new(s.model_dump(mode="json"))

    # --- what orders say ------------------------------------------------------------

    async def _on_news(self, news: OrderNews) -> None:
        s, facts = self.state, news.order
        known = s.orders.get(facts.order_id)
        if news.event == "placed":
            if known is not None:
                return  # told twice (a retried activity), or already in the starting state
            s.orders[facts.order_id] = facts
            s.orders_total += 1
            s.last_order_at = max(facts.placed_at, s.last_order_at or facts.placed_at)
            s.timezone, s.has_phone = news.timezone, news.has_phone
            await self._back_with_an_order(facts.order_id)
        elif known is not None and known.status == "placed":
            s.orders[facts.order_id] = known.model_copy(update={"status": news.event, "delivered_at": facts.delivered_at})
            self._note(f"order {facts.order_id} {news.event}")
            if news.event == "delivered":
                await self._after_delivery()
        self._forget_old_orders()
        self._show()

    async def _back_with_an_order(self, order_id: str) -> None:
        s = self.state
        self._note(f"order {order_id} placed")
        win_back = s.win_back
        if win_back is not None:
            s.win_back = None
            won = win_back.group == "treated" and win_back.sent
            phase = CustomerPhase.WON_BACK if won else self._qualified_phase()
            s.won_back_total += won
            await self._enter(phase, order_id=order_id, lapse_no=win_back.lapse_no)
        elif s.phase is CustomerPhase.NEW and s.orders_total > 1:
            await self._enter(CustomerPhase.ACTIVE, order_id=order_id)
        elif s.phase is CustomerPhase.WON_BACK:
            await self._enter(self._qualified_phase(), order_id=order_id)

    async def _after_delivery(self) -> None:
        s = self.state
        if not s.welcomed:
            s.welcomed = True
            self._queue(Touchpoint.WELCOME, "first-order", {})
        if s.phase is not CustomerPhase.LOYAL and self._qualified_phase() is CustomerPhase.LOYAL:
            await self._enter(CustomerPhase.LOYAL)
            if s.loyalty_rewards == 0:
                s.loyalty_rewards = 1
                coupon = await self._coupon("loyal", s.settings.loyalty_coupon)
                self._queue(Touchpoint.LOYALTY_REWARD, "loyal", coupon.details())

    def _qualified_phase(self) -> CustomerPhase:
        s, settings = self.state, self.state.settings
        since = workflow.now() - settings.loyal_window
        delivered = [o for o in s.orders.values() if o.delivered_at and o.delivered_at >= since]
        spend = sum((o.total for o in delivered), start=0)
        enough_spend = settings.loyal_after_spend is not None and spend >= settings.loyal_after_spend
        if len(delivered) >= settings.loyal_after_orders or enough_spend:
            return CustomerPhase.LOYAL
        return CustomerPhase.ACTIVE if s.orders_total > 1 else CustomerPhase.NEW

    def _forget_old_orders(self) -> None:
        """Only open orders and deliveries within the loyalty window matter."""
        s = self.state
        since = workflow.now() - s.settings.loyal_window
        s.orders = {
            k: o for k, o in s.orders.items() if o.status == "placed" or (o.delivered_at and o.delivered_at >= since)
        }

    # --- what time brings -------------------------------------------------------------

    def _next_step_at(self) -> datetime | None:
        s, settings = self.state, self.state.settings
        if s.win_back is not None:
            if s.phase is CustomerPhase.CHURNED:
                return None
            retry_at = s.win_back.started_at + settings.win_back_retry_after
            if s.win_back.group == "treated" and s.win_back.attempts == 1:
                return retry_at
            return retry_at + settings.churn_after
        if s.last_order_at is None or s.phase in (CustomerPhase.LAPSED, CustomerPhase.CHURNED):
            return None
        return s.last_order_at + settings.lapse_after

    async def _step(self) -> None:
        s = self.state
        win_back = s.win_back
        if win_back is None:
            await self._lapse()
        elif win_back.attempts == 1:
            win_back.attempts = 2
            self._queue(Touchpoint.WIN_BACK_REMINDER, f"win_back-{win_back.lapse_no}", win_back.coupon.details())
        else:
            await self._enter(CustomerPhase.CHURNED, lapse_no=win_back.lapse_no)
        self._show()

    async def _lapse(self) -> None:
        s = self.state
        s.lapses += 1
        occasion = f"win_back-{s.lapses}"
        if in_holdout(s.customer_id, s.settings.holdout_share):
            s.win_back = WinBack(lapse_no=s.lapses, group="holdout", started_at=workflow.now())
            await self._enter(CustomerPhase.LAPSED, lapse_no=s.lapses, win_back_group="holdout")
            return
        coupon = await self._coupon(occasion, s.settings.win_back_coupon)
        s.win_back = WinBack(lapse_no=s.lapses, group="treated", started_at=workflow.now(), coupon=coupon, attempts=1)
        await self._enter(CustomerPhase.LAPSED, lapse_no=s.lapses, win_back_group="treated", coupon_code=coupon.code)
        self._queue(Touchpoint.WIN_BACK, occasion, coupon.details())

    async def _wait(self, condition: Callable[[], bool], moment: datetime | None) -> None:
        """Wait for `condition` or `moment`. A pending timer that fires no
        later than `moment` is kept: when it fires early the loop re-arms it,
        so a customer ordering every week costs one timer per lapse period,
        not one per order."""
        if moment is not None and (self._timer is None or self._timer[1].done() or self._timer[0] > moment):
            self._timer = (moment, asyncio.create_task(workflow.sleep(moment - workflow.now())))
        timer = self._timer[1] if self._timer and not self._timer[1].done() else None
        await workflow.wait_condition(lambda: condition() or (timer is not None and timer.done()))

    # --- phases, coupons, messages ------------------------------------------------------

    async def _enter(self, phase: CustomerPhase, **change: Any) -> None:
        """Move to `phase` (a lapse always counts), with the PhaseChange
        fields that explain it: order_id, lapse_no, win_back_group, coupon_code."""
        s = self.state
        if phase is s.phase and phase is not CustomerPhase.LAPSED:
            return
        s.phase, s.phase_since = phase, workflow.now()
        group = change.get("win_back_group")
        self._note(f"phase {phase.value}" + (f" ({group})" if group else ""))
        await self._record_phase(phase, **change)

    async def _record_phase(self, phase: CustomerPhase, **change: Any) -> None:
        record = PhaseChange(customer_id=self.state.customer_id, phase=phase, at=workflow.now(), **change)
        await workflow.execute_activity_method(CustomerActivities.record_phase, record, **DB_TIMEOUTS)

    async def _coupon(self, milestone: str, terms: Any) -> Coupon:
        s = self.state
        request = CouponRequest(customer_id=s.customer_id, milestone=milestone, terms=terms, issued_at=workflow.now())
        return await workflow.execute_activity_method(CustomerActivities.issue_coupon, request, **DB_TIMEOUTS)

    def _queue(self, kind: Touchpoint, occasion: str, details: dict[str, Any]) -> None:
        self.state.outbox.append(
            QueuedMessage(kind=kind, channel=Channel.EMAIL, details=details, queued_at=workflow.now(), occasion=occasion)
        )

    async def _run_lane(self) -> None:
        """Send the outbox in order, each message on email first and on SMS
        when email may not carry it; until the run hands over."""
        s = self.state
        while True:
            await workflow.wait_condition(lambda: bool(s.outbox) or self._closing)
            if self._closing:
                return
            message = s.outbox[0]
            try:
                outcome = await self._send(message)
            except asyncio.CancelledError:
                return  # handed over: the next run sends it
            s.outbox.pop(0)
            metrics.message_settled(message, outcome)
            s.messages[self._key(message)] = outcome.state
            if s.win_back and message.occasion == f"win_back-{s.win_back.lapse_no}" and outcome.state is DeliveryState.SENT:
                s.win_back.sent = True
            self._note(f"{message.kind.value} by {message.channel.value}: {outcome.state.value}")
            refused = outcome.state in (DeliveryState.FAILED, DeliveryState.NOT_PERMITTED)
            fallback = channel_policy.other_channel(message.channel)
            if refused and s.has_phone and fallback is Channel.SMS:
                s.outbox.insert(0, message.model_copy(update={"channel": fallback}))
            self._show()

    async def _send(self, message: QueuedMessage) -> MessageOutcome:
        """A message left in doubt is settled here, in the lane: nothing
        overtakes this journey's messages, and they may wait."""
        s = self.state
        quiet = sending.QuietHours(s.timezone, s.settings.sms_quiet_from, s.settings.sms_quiet_until)
        closing = lambda: self._closing  # noqa: E731

        def attempt(mode: SendMode) -> Awaitable[MessageOutcome]:
            request = MessageRequest(
                key=self._key(message), kind=message.kind, channel=message.channel, customer_id=s.customer_id,
                details=message.details, mode=mode,
            )
            return sending.send(request, message, quiet, closing, paused_retry=PAUSED_CHANNEL_RETRY, on_paused=lambda: None)

        return await sending.settle_in_doubt(await attempt(SendMode.SEND), lambda: attempt(SendMode.SETTLE), closing)

    def _key(self, message: QueuedMessage) -> str:
        return f"{workflow.info().workflow_id}:{message.kind.value}:{message.occasion}:{message.channel.value}"

    # --- status, search attributes, Web UI ------------------------------------------------

    @staticmethod
    def _continue_as_new_due() -> bool:
        info = workflow.info()
        return info.get_current_history_length() > CONTINUE_AS_NEW_AFTER_EVENTS or info.is_continue_as_new_suggested()

    def _wanted_search_attributes(self) -> dict[Any, Any]:
        return {sa.CUSTOMER_ID: self.state.customer_id, sa.CUSTOMER_PHASE: self.state.phase.value}

    def _note(self, line: str) -> None:
        s = self.state
        s.timeline.append(f"{workflow.now():%Y-%m-%d %H:%M} UTC {line}")
        del s.timeline[:-TIMELINE_KEPT]

    def _show(self) -> None:
        s = self.state
        lines = [
            f"**{s.phase.value}** since {s.phase_since:%Y-%m-%d %H:%M} UTC" if s.phase_since else f"**{s.phase.value}**",
            f"{s.orders_total} order(s), {s.won_back_total} time(s) won back, {s.lapses} lapse(s)",
        ]
        if s.win_back is not None:
            lines.append(f"win-back #{s.win_back.lapse_no}: {s.win_back.group}, {s.win_back.attempts} message(s)")
        lines += [f"- queued: {m.kind.value} by {m.channel.value}" for m in s.outbox]
        lines += [f"- {line}" for line in reversed(s.timeline)]
        workflow.set_current_details("\n".join(lines))

    @workflow.query
    def status(self) -> CustomerView:
        s = self.state
        since = workflow.now() - s.settings.loyal_window
        return CustomerView(
            customer_id=s.customer_id,
            phase=s.phase,
            phase_since=s.phase_since,
            orders_total=s.orders_total,
            delivered_in_window=sum(1 for o in s.orders.values() if o.delivered_at and o.delivered_at >= since),
            loyalty_rewards=s.loyalty_rewards,
            lapses=s.lapses,
            won_back_total=s.won_back_total,
            win_back_group=s.win_back.group if s.win_back else None,
            messages=dict(s.messages),
            timeline=list(s.timeline),
        )

    # --- signals ----------------------------------------------------------------------------

    @workflow.signal
    def order_news(self, raw: Any) -> None:
        # Raw, so a malformed payload is dropped with a reason, not a failed task.
        try:
            self._news.append(OrderNews.model_validate(raw))
        except ValidationError as err:
            workflow.logger.warning("rejected order news: %d error(s)", err.error_count())

    @workflow.signal
    def message_resent(self, outcome: MessageOutcome) -> None:
        """What an operator's `orders resend` of one of this customer's
        messages came to (workflows/resend.py): recorded and on the timeline."""
        s = self.state
        if outcome.key not in s.messages:
            workflow.logger.warning("ignored a message_resent signal about no message of this customer")
            return
        kind = Touchpoint(outcome.key.split(":")[1])
        metrics.count_message(kind, outcome.channel, outcome.state)
        s.messages[outcome.key] = outcome.state
        self._note(f"{kind.value} by {outcome.channel.value}: {outcome.state.value} (resent by an operator)")
        self._show()

    @workflow.signal
    def consent_changed(self, raw: Any) -> None:
        """From the HTTP service: consent itself is read at send time from
        PostgreSQL; here it is shown on the customer's timeline."""
        s = self.state
        s.consent_changes += 1
        if isinstance(raw, dict):
            what = f"{raw.get('message_class')} {raw.get('channel')}: {'granted' if raw.get('granted') else 'withdrawn'}"
            self._note(f"consent {what} ({raw.get('source')})")
        self._show()
