"""Which channel carries which message: pure functions, unit-tested without
a server (tests/test_channel_policy.py).

- Each touchpoint has its channels; a customer who cannot be reached on any
  of them gets it on the other channel.
- A channel that refuses a message for good hands it to the other channel,
  once, unless that channel already carries this touchpoint.
- A message still waiting for its channel when the journey has moved past
  it is superseded: "on its way" after "delivered" would only confuse.
- A message deferred (quiet hours, the marketing frequency cap) past the
  moment it is useful is stale and not sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from workflows.models import Channel, OrderStatus, Touchpoint

CHANNELS: dict[Touchpoint, tuple[Channel, ...]] = {
    Touchpoint.ORDER_CONFIRMATION: (Channel.EMAIL,),
    Touchpoint.PAYMENT_REMINDER: (Channel.EMAIL,),
    Touchpoint.PAYMENT_CONFIRMATION: (Channel.EMAIL,),
    Touchpoint.ORDER_CANCELLED: (Channel.EMAIL,),
    Touchpoint.DISPATCH_DELAYED: (Channel.EMAIL,),
    Touchpoint.DISPATCH_NOTICE: (Channel.EMAIL, Channel.SMS),
    Touchpoint.DELIVERY_DAY: (Channel.SMS,),
    Touchpoint.DELIVERY_DELAYED: (Channel.EMAIL,),
    Touchpoint.PARCEL_LOST: (Channel.EMAIL,),
    Touchpoint.DELIVERY_CONFIRMATION: (Channel.EMAIL,),
    Touchpoint.LOCKER_REMINDER: (Channel.SMS,),
    Touchpoint.FEEDBACK_REQUEST: (Channel.EMAIL,),
    Touchpoint.RECOMMENDATIONS: (Channel.EMAIL,),
    Touchpoint.WELCOME: (Channel.EMAIL,),
    Touchpoint.LOYALTY_REWARD: (Channel.EMAIL,),
    Touchpoint.WIN_BACK: (Channel.EMAIL,),
    Touchpoint.WIN_BACK_REMINDER: (Channel.EMAIL,),
}

# Suggestions and greetings date: deferred longer than this, they are dropped.
USEFUL_FOR = {Touchpoint.RECOMMENDATIONS: timedelta(days=14), Touchpoint.WELCOME: timedelta(days=14)}
# Messages that are useless after a moment their details name.
USEFUL_UNTIL = {
    Touchpoint.LOCKER_REMINDER: "pickup_deadline",
    Touchpoint.LOYALTY_REWARD: "expires_at",
    Touchpoint.WIN_BACK: "expires_at",
    Touchpoint.WIN_BACK_REMINDER: "expires_at",
}

_PAST_PAYMENT = frozenset(
    {
        OrderStatus.PAID,
        OrderStatus.DISPATCHED,
        OrderStatus.OUT_FOR_DELIVERY,
        OrderStatus.DELIVERED,
        OrderStatus.FEEDBACK_REQUESTED,
        OrderStatus.COMPLETED,
        OrderStatus.CANCELLED,
    }
)
_DELIVERED = frozenset({OrderStatus.DELIVERED, OrderStatus.FEEDBACK_REQUESTED, OrderStatus.COMPLETED})
_PAST_DISPATCH = _DELIVERED | {OrderStatus.DISPATCHED, OrderStatus.OUT_FOR_DELIVERY, OrderStatus.LOST}
_PARCEL_GONE = _DELIVERED | {OrderStatus.LOST}


@dataclass(frozen=True)
class Progress:
    """How far the journey has come when a message reaches its channel."""

    status: OrderStatus
    parcel_collected: bool = False
    feedback_received: bool = False


def is_superseded(kind: Touchpoint, progress: Progress) -> bool:
    status = progress.status
    if kind is Touchpoint.PAYMENT_REMINDER:
        return status in _PAST_PAYMENT
    if kind in (Touchpoint.PAYMENT_CONFIRMATION, Touchpoint.DISPATCH_DELAYED):
        return status in _PAST_DISPATCH
    if kind in (Touchpoint.DISPATCH_NOTICE, Touchpoint.DELIVERY_DAY, Touchpoint.DELIVERY_DELAYED):
        return status in _PARCEL_GONE
    if kind is Touchpoint.LOCKER_REMINDER:
        return progress.parcel_collected
    if kind is Touchpoint.FEEDBACK_REQUEST:
        return progress.feedback_received
    return False


def other_channel(channel: Channel) -> Channel:
    return Channel.SMS if channel is Channel.EMAIL else Channel.EMAIL


def channels_for(kind: Touchpoint, reachable: set[Channel]) -> list[Channel]:
    planned = [c for c in CHANNELS[kind] if c in reachable]
    if planned:
        return planned
    other = other_channel(CHANNELS[kind][0])
    return [other] if other in reachable else []


def fallback_for(failed: Channel, used: set[Channel], reachable: set[Channel]) -> Channel | None:
    """The channel that takes over a message `failed` refused for good,
    unless it already carries it."""
    other = other_channel(failed)
    return other if other in reachable and other not in used else None


def fallback_overtaken(fallback: Channel, later_sent_on: set[Channel]) -> bool:
    """The fallback's channel has already sent a later message: the fallback
    would arrive out of journey order, so it is superseded."""
    return fallback in later_sent_on


def place_in_journey_order(queued_ranks: list[int], rank: int) -> int:
    """Where a fallback message joins a channel's queue: before the first
    later message, but never ahead of the first, which may be in flight."""
    return next((i for i, queued in enumerate(queued_ranks) if i > 0 and queued > rank), len(queued_ranks))


def stale_at(kind: Touchpoint, queued_at: datetime | None, details: dict[str, Any]) -> datetime | None:
    """The moment a deferred message stops being worth sending; None: never.
    Order messages not listed stay true (a late confirmation still informs)
    or are superseded by the journey instead."""
    if kind in USEFUL_UNTIL and details.get(USEFUL_UNTIL[kind]):
        return datetime.fromisoformat(details[USEFUL_UNTIL[kind]])
    if kind in USEFUL_FOR and queued_at is not None:
        return queued_at + USEFUL_FOR[kind]
    return None


def is_stale_at(moment: datetime, kind: Touchpoint, queued_at: datetime | None, details: dict[str, Any]) -> bool:
    limit = stale_at(kind, queued_at, details)
    return limit is not None and moment >= limit
