"""CustomerJourney: one workflow per customer, `customer-{customer_id}`.

Orders tell it what happened: record_order starts it, or signals it, with
`order_news` "placed" (signal-with-start: one billable action), and the
order's workflow signals "delivered", "cancelled" or "lost" (one more).
Feedback stays with the order and the seller.

Phases (search attribute CustomerPhase): new → active → loyal → lapsed →
churned, and won_back when an order follows a win-back. It sends a welcome
on the first delivered order, a loyalty coupon once, and for a lapse a
win-back with a coupon and one reminder, except to the holdout share.

Its messages go through the same lanes as an order's (workflows/lanes.py):
email first, SMS when email may not carry one and the customer has a phone.

It lives for years: it continues as new long before its history is large,
carrying its state; it uses one timer per lapse period, however often the
customer orders, since a timer that fires early is simply re-armed.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from activities.customers import CustomerActivities
    from workflows import lanes, metrics, waiting
    from workflows import search_attributes as sa
    from workflows.ledger_key import LedgerKey
    from workflows.models import (
        CUSTOMER_ERASED,
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
        QuietHours,
        SendMode,
        Touchpoint,
        WinBack,
    )
    from workflows.retries import DB_TIMEOUTS
    from workflows.waiting import ContinueAsNewDue, CustomerErased, NextMoment, Waits

# A customer's history grows by a few events per order: years of orders fit
# in one run, but a flood of signals must not reach the server's limits.
CONTINUE_AS_NEW_AFTER_EVENTS = 2_000
TIMELINE_KEPT = 30
# Patched only where a win-back is still waiting when the customer orders
# again: a journey that sent it anyway before replays as it ran.
WIN_BACK_OVERTAKEN = "win-back-overtaken-by-order"


def in_holdout(customer_id: str, share: float) -> bool:
    """The same answer for a customer on every worker and every replay."""
    digest = hashlib.sha256(customer_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


@workflow.defn(name=CUSTOMER_WORKFLOW_TYPE)
class CustomerJourney:
    # The provider pause for this journey's few messages.
    paused_retry = timedelta(hours=1)

    @workflow.init
    def __init__(self, raw_state: Any) -> None:
        self.state = CustomerState.model_validate(raw_state)
        self._news: list[OrderNews] = self.state.pending_news
        self.state.pending_news = []
        self._attributes = sa.Keeper(sa.CUSTOMER, self._wanted_search_attributes)
        self._lanes = lanes.Lanes(self.state.lanes, self)
        # One pending timer, kept while it fires before the next step is due.
        self._waits = Waits(NextMoment().timer, self._lanes, lambda: CONTINUE_AS_NEW_AFTER_EVENTS)

    @workflow.run
    async def run(self, raw_state: Any) -> None:
        s = self.state
        self._attributes.start()
        self._lanes.start()
        if workflow.info().continued_run_id is None:  # the phase it starts in, for the report
            await self._record_phase(s.phase)
        self._show()
        try:
            await self._live()
        except ContinueAsNewDue:
            pass
        except CustomerErased:
            # Forgotten: the journey ends; what is queued is not sent.
            await self._lanes.close()
            self._lanes.drop_queued(CUSTOMER_ERASED)
            await workflow.wait_condition(workflow.all_handlers_finished)
            self._attributes.stop()
            return
        await waiting.continue_as_new(self._lanes, self._attributes, self._carried_over)

    async def _live(self) -> None:
        """What orders say and what time brings, until this run's history is
        long enough to hand over to the next run."""
        while True:
            while self._news:
                await self._on_news(self._news.pop(0))
            step_at = self._next_step_at()
            if step_at is not None and workflow.now() >= step_at:
                await self._step()
                continue
            if self._waits.continue_as_new_due():
                return
            await self._waits.until(lambda: bool(self._news), step_at)

    def _carried_over(self) -> CustomerState:
        # News that came in while this run handed over is the next run's.
        self.state.pending_news = self._news
        return self.state

    # --- what orders say ------------------------------------------------------------

    async def _on_news(self, news: OrderNews) -> None:
        s, facts = self.state, news.order
        known = s.orders.get(facts.order_id)
        if news.event == "placed":
            # The latest order's contact facts, even of an order known already.
            s.timezone, s.has_phone = news.timezone, news.has_phone
            if known is not None:
                return  # told twice (a retried activity), or already in the starting state
            s.orders[facts.order_id] = facts
            s.orders_total += 1
            s.last_order_at = max(facts.placed_at, s.last_order_at or facts.placed_at)
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
            occasion = f"win_back-{win_back.lapse_no}"
            waiting = any(m.occasion == occasion for m in [*s.lanes.queued, *s.lanes.settling])
            if waiting and workflow.patched(WIN_BACK_OVERTAKEN):
                s.overtaken_win_backs.append(occasion)
            won = win_back.group == "treated" and win_back.sent
            phase = CustomerPhase.WON_BACK if won else s.qualified_phase(workflow.now())
            s.won_back_total += won
            await self._enter(phase, order_id=order_id, lapse_no=win_back.lapse_no)
        elif s.phase is CustomerPhase.NEW and s.orders_total > 1:
            await self._enter(CustomerPhase.ACTIVE, order_id=order_id)
        elif s.phase is CustomerPhase.WON_BACK:
            await self._enter(s.qualified_phase(workflow.now()), order_id=order_id)

    async def _after_delivery(self) -> None:
        s = self.state
        if not s.welcomed:
            s.welcomed = True
            self._lanes.queue(Touchpoint.WELCOME, {}, occasion="first-order")
        if s.phase is not CustomerPhase.LOYAL and s.qualified_phase(workflow.now()) is CustomerPhase.LOYAL:
            await self._enter(CustomerPhase.LOYAL)
            if s.loyalty_rewards == 0:
                s.loyalty_rewards = 1
                coupon = await self._coupon("loyal", s.settings.loyalty_coupon)
                self._lanes.queue(Touchpoint.LOYALTY_REWARD, coupon.details(), occasion="loyal")

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
            self._lanes.queue(
                Touchpoint.WIN_BACK_REMINDER, win_back.coupon.details(), occasion=f"win_back-{win_back.lapse_no}"
            )
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
        self._lanes.queue(Touchpoint.WIN_BACK, coupon.details(), occasion=occasion)

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

    # --- what the lanes ask (lanes.Journey) ---------------------------------------------

    def reachable(self) -> set[Channel]:
        return {Channel.EMAIL, Channel.SMS} if self.state.has_phone else {Channel.EMAIL}

    def key(self, message: QueuedMessage) -> str:
        return str(LedgerKey(workflow.info().workflow_id, message.kind, message.channel, message.occasion))

    def request(self, message: QueuedMessage, mode: SendMode) -> MessageRequest:
        return MessageRequest(
            key=self.key(message), kind=message.kind, channel=message.channel, customer_id=self.state.customer_id,
            details=message.details, mode=mode,
        )

    def quiet_hours(self, message: QueuedMessage) -> QuietHours:
        s = self.state
        return QuietHours(timezone=s.timezone, quiet_from=s.settings.sms_quiet_from, quiet_until=s.settings.sms_quiet_until)

    def overtaken(self, message: QueuedMessage) -> bool:
        """A win-back (or its reminder) still waiting (quiet hours, the cap,
        an outage) when the customer orders again is over; the rest may wait."""
        return (
            message.kind in (Touchpoint.WIN_BACK, Touchpoint.WIN_BACK_REMINDER)
            and message.occasion in self.state.overtaken_win_backs
        )

    def rank(self, message: QueuedMessage) -> datetime | None:
        return message.queued_at

    def carried_on(self, message: QueuedMessage) -> set[Channel]:
        return {c for c in Channel if self.key(message.model_copy(update={"channel": c})) in self.state.messages}

    def later_sent_on(self, message: QueuedMessage) -> set[Channel]:
        # Every message starts on email and SMS carries only those email
        # refused, each at once: in journey order, except a mail refused
        # when it was settled, after a later one went by SMS. The messages
        # kept here do not say which came first; that rare one still goes.
        return set()

    def record(self, message: QueuedMessage, outcome: MessageOutcome) -> None:
        s = self.state
        s.messages[self.key(message)] = outcome.state
        if s.win_back and message.occasion == f"win_back-{s.win_back.lapse_no}" and outcome.state is DeliveryState.SENT:
            s.win_back.sent = True
        self._note(f"{message.kind.value} by {message.channel.value}: {outcome.state.value}")

    def routed(self) -> None:
        self._show()

    def provider_paused(self, channel: Channel) -> None:
        """Not flagged: the orders' flags already send an operator to the credentials."""

    # --- status, search attributes, Web UI ------------------------------------------------

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
        lines += lanes.describe(s.lanes)
        lines += [f"- {line}" for line in reversed(s.timeline)]
        workflow.set_current_details("\n".join(lines))

    @workflow.query
    def status(self) -> CustomerView:
        s = self.state
        return CustomerView(
            customer_id=s.customer_id,
            phase=s.phase,
            phase_since=s.phase_since,
            timezone=s.timezone,
            has_phone=s.has_phone,
            orders_total=s.orders_total,
            delivered_in_window=len(s.delivered_in_window(workflow.now())),
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
        kind = LedgerKey.parse(outcome.key).kind
        metrics.count_message(kind, outcome.channel, outcome.state)
        s.messages[outcome.key] = outcome.state
        self._note(f"{kind.value} by {outcome.channel.value}: {outcome.state.value} (resent by an operator)")
        self._show()

    @workflow.signal
    def customer_erased(self, _: Any = None) -> None:
        """The customer was forgotten (store/erasure.py): the journey ends."""
        self._waits.customer_erased = True

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
