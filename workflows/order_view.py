"""What an order shows, apart from what it does: the `status` query's view,
the Web UI's details (set_current_details), the flags an operator acts on
(`attention`) and the search attributes (OrderStatus, CustomerId,
NeedsAttention), upserted in one batch per workflow task."""

from __future__ import annotations

from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workflows import lanes
    from workflows import search_attributes as sa
    from workflows.models import JourneyState, OrderStatus, OrderStatusView


class OrderView:
    def __init__(self, state: JourneyState | None, rejection_reason: str | None) -> None:
        self._state = state
        self._rejection_reason = rejection_reason
        self.attributes = sa.Keeper(sa.ORDER, self._wanted_search_attributes)

    def transition(self, status: OrderStatus) -> None:
        self._state.status = status
        self.show()

    def flag(self, reason: str) -> None:
        """The order needs an operator, for `reason` (a fixed word and the
        message concerned, never customer data)."""
        if reason in self._state.attention:
            return
        self._state.attention.append(reason)
        workflow.logger.warning("order needs attention: %s", reason)
        self.show()

    def unflag(self, reason: str) -> None:
        if reason in self._state.attention:
            self._state.attention.remove(reason)
            self.show()

    def reject(self) -> OrderStatusView:
        """A malformed order: it ends at once, with its reason."""
        workflow.logger.warning("order rejected: %s", self._rejection_reason)
        workflow.upsert_search_attributes(
            [sa.ORDER_STATUS.value_set(OrderStatus.REJECTED.value), sa.NEEDS_ATTENTION.value_set(True)]
        )
        return self.view()

    def show(self) -> None:
        """The Web UI's summary of the order."""
        s = self._state
        lines = [f"**{s.status.value}**"]
        if s.attention:
            lines.append(f"⚠ needs attention: {', '.join(s.attention)}")
        for t in s.touchpoints:
            ref = f" `{t.provider_message_id}`" if t.provider_message_id else ""
            lines.append(f"- {t.at:%Y-%m-%d %H:%M} UTC {t.kind.value} by {t.channel.value}: {t.state.value}{ref}")
        lines += lanes.describe(s.lanes)
        if s.rejected:
            lines.append(f"- {s.rejected_total} rejected event(s), latest: {s.rejected[-1].reason}")
        workflow.set_current_details("\n".join(lines))

    def view(self) -> OrderStatusView:
        s = self._state
        if s is None:
            return OrderStatusView(
                order_id=None, status=OrderStatus.REJECTED, needs_attention=True, rejection_reason=self._rejection_reason
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
            queued_messages=[f"{m.kind.value}:{m.channel.value}" for m in s.lanes.queued],
        )

    def _wanted_search_attributes(self) -> dict[Any, Any]:
        s = self._state
        return {
            sa.ORDER_STATUS: s.status.searchable.value,
            sa.CUSTOMER_ID: s.order.customer.customer_id,
            sa.NEEDS_ATTENTION: bool(s.attention),
        }
