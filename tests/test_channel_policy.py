"""Which channel carries which message, and which message the journey has
overtaken: pure functions, without a server."""

from __future__ import annotations

from workflows.channel_policy import (
    Progress,
    channels_for,
    fallback_for,
    fallback_overtaken,
    is_superseded,
    place_in_journey_order,
)
from workflows.models import Channel, OrderStatus, Touchpoint

BOTH = {Channel.EMAIL, Channel.SMS}


def test_touchpoints_use_their_channels_or_the_only_one_reachable():
    assert channels_for(Touchpoint.DISPATCH_NOTICE, BOTH) == [Channel.EMAIL, Channel.SMS]
    assert channels_for(Touchpoint.DISPATCH_NOTICE, {Channel.EMAIL}) == [Channel.EMAIL]
    assert channels_for(Touchpoint.DELIVERY_DAY, {Channel.EMAIL}) == [Channel.EMAIL]
    assert channels_for(Touchpoint.ORDER_CONFIRMATION, set()) == []


def test_a_refused_message_falls_back_once_to_a_channel_not_yet_used():
    assert fallback_for(Channel.EMAIL, {Channel.EMAIL}, BOTH) is Channel.SMS
    assert fallback_for(Channel.EMAIL, {Channel.EMAIL, Channel.SMS}, BOTH) is None
    assert fallback_for(Channel.SMS, {Channel.SMS}, {Channel.SMS}) is None


def test_item05_a_fallback_keeps_journey_order_on_its_channel():
    # The other channel already sent a later message: too late to fall back.
    assert fallback_overtaken(Channel.SMS, {Channel.SMS})
    assert not fallback_overtaken(Channel.SMS, {Channel.EMAIL})
    # Joins the queue before later messages, never ahead of the one in flight.
    assert place_in_journey_order([], 2) == 0
    assert place_in_journey_order([5, 6], 2) == 1
    assert place_in_journey_order([1, 3], 2) == 1
    assert place_in_journey_order([1, 2], 4) == 2


def test_item05_messages_overtaken_by_the_journey_are_superseded():
    delivered = Progress(OrderStatus.DELIVERED)
    assert is_superseded(Touchpoint.DISPATCH_NOTICE, delivered)
    assert is_superseded(Touchpoint.DELIVERY_DAY, delivered)
    assert not is_superseded(Touchpoint.DISPATCH_NOTICE, Progress(OrderStatus.OUT_FOR_DELIVERY))
    assert is_superseded(Touchpoint.PAYMENT_REMINDER, Progress(OrderStatus.PAID))
    assert is_superseded(Touchpoint.LOCKER_REMINDER, Progress(OrderStatus.DELIVERED, parcel_collected=True))
    assert is_superseded(Touchpoint.FEEDBACK_REQUEST, Progress(OrderStatus.FEEDBACK_REQUESTED, feedback_received=True))
    # What stays true is never superseded.
    for kind in (Touchpoint.ORDER_CONFIRMATION, Touchpoint.ORDER_CANCELLED, Touchpoint.DELIVERY_CONFIRMATION,
                 Touchpoint.RECOMMENDATIONS):
        assert not is_superseded(kind, Progress(OrderStatus.COMPLETED))
