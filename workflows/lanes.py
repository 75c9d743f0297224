"""Message lanes: how a workflow's messages go out, the same for an order
and a customer. A workflow queues a message and goes on; it never waits for
one.

- One lane per channel sends its messages one at a time, in journey order,
  each through workflows/sending.py (quiet hours, the marketing cap's
  deferral, a paused provider, staleness). An outage of one provider delays
  neither the other channel nor the journey.
- A mail left in doubt that the provider can show later moves to the
  settling lane, which settles it then (looked up, sent if not there, or
  only looked up once the journey has overtaken it), so that wait holds up
  no other mail.
- A message refused for good or not permitted on its channel is handed over
  to the other channel (`hand_over`): once, in journey order, and never
  after a later message went there (it is superseded instead).
- A message the journey overtakes before it goes is withdrawn and recorded
  superseded; an attempt already talking to the provider is let finish, and
  its outcome kept. One an earlier attempt of which may have reached the
  provider (no answer, a gateway's 502/504, a worker killed) is never
  recorded superseded unseen: it is settled without sending (an SMS looked
  up at once, a mail through the settling lane), and recorded sent or
  superseded as the provider says.
- When the run hands over to the next (`close`), a send waiting for a retry
  is withdrawn and stays first in its queue; the next run sends it under
  the same ledger key.

What differs between journeys comes from the workflow, as a `Journey`.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any, Callable, Protocol

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workflows import channel_policy, metrics, sending
    from workflows.models import (
        Channel,
        DeliveryState,
        MessageLanes,
        MessageOutcome,
        MessageRequest,
        QueuedMessage,
        QuietHours,
        SendMode,
        Touchpoint,
    )
    from workflows.waiting import pause_until

WITHDRAWN_SEND_SETTLED = "withdrawn-send-settled"


class Journey(Protocol):
    """What a workflow tells its lanes about its messages."""

    # How often a provider that rejects our credentials is tried again.
    paused_retry: timedelta

    def reachable(self) -> set[Channel]:
        """The channels the customer has (whether they allow one is read at send time)."""

    def key(self, message: QueuedMessage) -> str:
        """The message's ledger key (workflows/ledger_key.py)."""

    def request(self, message: QueuedMessage, mode: SendMode) -> MessageRequest:
        """The send_message activity's input."""

    def quiet_hours(self, message: QueuedMessage) -> QuietHours:
        """When the message, if an SMS, may not go (the customer's local night)."""

    def overtaken(self, message: QueuedMessage) -> bool:
        """The journey has moved past the message: not to be sent late."""

    def rank(self, message: QueuedMessage) -> Any:
        """The message's place in journey order (comparable)."""

    def carried_on(self, message: QueuedMessage) -> set[Channel]:
        """The channels the message has an outcome recorded on."""

    def later_sent_on(self, message: QueuedMessage) -> set[Channel]:
        """The channels a message later in journey order went on."""

    def record(self, message: QueuedMessage, outcome: MessageOutcome) -> None:
        """A message reached an outcome (kept before the lanes act on it)."""

    def routed(self) -> None:
        """The lanes acted on an outcome: settling, handed over, or done."""

    def provider_paused(self, channel: Channel) -> None:
        """The channel's provider rejects our credentials."""


def describe(state: MessageLanes) -> list[str]:
    """Lines for a workflow's Web UI details."""
    return [f"- queued: {m.kind.value} by {m.channel.value}" for m in state.queued] + [
        f"- in doubt, settled at {m.settle_at:%Y-%m-%d %H:%M:%S} UTC: {m.kind.value} by {m.channel.value}"
        for m in state.settling
    ]


class Lanes:
    def __init__(self, state: MessageLanes, journey: Journey) -> None:
        self._state = state
        self._journey = journey
        self._tasks: list[asyncio.Task] = []
        self._closing = False

    def start(self) -> None:
        """One task per channel, then the settling lane's, for the life of the run."""
        self._tasks = [asyncio.create_task(self._run_lane(channel)) for channel in Channel]
        self._tasks.append(asyncio.create_task(self._run_settling()))

    def queue(self, kind: Touchpoint, details: dict[str, Any], occasion: str | None = None) -> None:
        """Queue `kind` on each of its channels the customer has."""
        for channel in channel_policy.channels_for(kind, self._journey.reachable()):
            self._state.queues[channel].append(
                QueuedMessage(kind=kind, channel=channel, details=details, queued_at=workflow.now(), occasion=occasion)
            )

    def idle(self) -> bool:
        return not any(self._state.queues.values()) and not self._state.settling

    def hand_over(self, message: QueuedMessage) -> None:
        """The other channel carries a message its own channel did not, once:
        not if that channel carries it already, nor after a later message
        went there (it would arrive out of journey order)."""
        journey, queues = self._journey, self._state.queues
        used = journey.carried_on(message) | {
            m.channel for m in self._state.queued if m.kind is message.kind and m.occasion == message.occasion
        }
        fallback = channel_policy.fallback_for(message.channel, used, journey.reachable())
        if fallback is None:
            return
        copy = message.model_copy(update={"channel": fallback, "attempted": False})
        if channel_policy.fallback_overtaken(fallback, journey.later_sent_on(message)):
            metrics.count_message(message.kind, fallback, DeliveryState.SUPERSEDED)
            journey.record(copy, self._superseded(copy))
        else:
            at = channel_policy.place_in_journey_order([journey.rank(m) for m in queues[fallback]], journey.rank(message))
            queues[fallback].insert(at, copy)

    async def close(self) -> None:
        """Hand over to the next run: a send waiting for its next try is
        withdrawn and stays in its queue; an attempt already running is let
        finish."""
        self._closing = True
        await workflow.wait_condition(lambda: all(task.done() for task in self._tasks))
        self.raise_failure()

    def drop_queued(self, reason: str) -> None:
        """Once closed for good (the customer erased): every message still
        queued is recorded as not sent, with the reason."""
        for queue in self._state.queues.values():
            for message in queue:
                outcome = MessageOutcome(
                    key=self._journey.key(message), channel=message.channel, state=DeliveryState.NOT_PERMITTED, error=reason
                )
                metrics.message_outcome(message, outcome)
                self._journey.record(message, outcome)
            queue.clear()

    def failure(self) -> BaseException | None:
        return next((task.exception() for task in self._tasks if task.done() and not task.cancelled()), None)

    def raise_failure(self) -> None:
        """A lane that died (a bug, an undecodable result) fails the workflow
        task, visibly, instead of leaving its messages queued for ever."""
        failure = self.failure()
        if failure is not None:
            raise failure

    # --- the lanes' tasks ---------------------------------------------------------

    async def _run_lane(self, channel: Channel) -> None:
        queue = self._state.queues[channel]
        while True:
            await workflow.wait_condition(lambda: bool(queue) or self._closing)
            if self._closing:
                return
            outcome = await self._deliver(queue)
            if outcome is None:  # handed over: the next run sends it
                return
            self._act_on(queue.pop(0), outcome)

    async def _run_settling(self) -> None:
        """Settle each mail left in doubt at the moment its activity named
        (when the provider would show it), one at a time."""
        settling = self._state.settling
        while True:
            await workflow.wait_condition(lambda: bool(settling) or self._closing)
            if self._closing:
                return
            message = settling[0]
            if message.settle_at > workflow.now():
                try:
                    await pause_until(message.settle_at, lambda: self._closing)
                except asyncio.CancelledError:
                    return  # handed over: the next run settles it
            # Settling is withdrawn only by the hand-over; once overtaken, the
            # message is settled without sending.
            mode = SendMode.SETTLE_WITHOUT_SENDING if self._journey.overtaken(message) else SendMode.SETTLE
            outcome = await self._attempt(settling, mode, lambda: self._closing)
            if outcome is None:
                return
            self._act_on(settling.pop(0), outcome)

    async def _deliver(self, queue: list[QueuedMessage]) -> MessageOutcome | None:
        """Send the first message of `queue`, unless the journey overtakes it
        first; None once the run hands over. A send overtaken while it waits
        (for quiet hours, the cap, a retry) is withdrawn; an attempt already
        running is let finish and its outcome kept."""
        overtaken = lambda: self._journey.overtaken(queue[0])  # noqa: E731
        if not overtaken():
            outcome = await self._attempt(queue, SendMode.SEND, lambda: overtaken() or self._closing)
            if outcome is not None or self._closing:
                return outcome
        # Patched: an order whose withdrawn send was recorded superseded at
        # once replays as it ran (the call records a marker, billed: made
        # only on this rare path).
        if queue[0].attempted and workflow.patched(WITHDRAWN_SEND_SETTLED):
            return await self._attempt(queue, SendMode.SETTLE_WITHOUT_SENDING, lambda: self._closing)
        return self._superseded(queue[0])

    async def _attempt(
        self, queue: list[QueuedMessage], mode: SendMode, withdrawn: Callable[[], bool]
    ) -> MessageOutcome | None:
        """The first message of `queue` through the activity in `mode`; None
        once `withdrawn`. Whether an attempt may have reached the provider is
        kept on the message, for the run it may be handed over to."""

        def attempted(reached: bool) -> None:
            if queue[0].attempted is not reached:
                queue[0] = queue[0].model_copy(update={"attempted": reached})

        message, journey = queue[0], self._journey
        request = journey.request(message, mode)
        if message.channel is Channel.SMS and mode is SendMode.SEND:  # a look-up reaches no customer
            request = request.model_copy(update={"quiet_hours": journey.quiet_hours(message)})
        sending_it = asyncio.create_task(
            sending.send(
                request,
                message,
                withdrawn,
                paused_retry=journey.paused_retry,
                on_paused=lambda: journey.provider_paused(message.channel),
                attempted=attempted,
            )
        )
        await workflow.wait_condition(lambda: sending_it.done() or withdrawn())
        if not sending_it.done():
            sending_it.cancel()
        try:
            return await sending_it
        except asyncio.CancelledError:
            return None

    def _act_on(self, message: QueuedMessage, outcome: MessageOutcome) -> None:
        metrics.message_outcome(message, outcome)
        self._journey.record(message, outcome)
        # Refused for good, or not allowed there: the other channel may carry it.
        if outcome.state in (DeliveryState.FAILED, DeliveryState.NOT_PERMITTED):
            self.hand_over(message)
        elif outcome.awaits_settlement:
            self._state.settling.append(message.model_copy(update={"settle_at": outcome.not_before}))
        self._journey.routed()

    def _superseded(self, message: QueuedMessage) -> MessageOutcome:
        return MessageOutcome(key=self._journey.key(message), channel=message.channel, state=DeliveryState.SUPERSEDED)
