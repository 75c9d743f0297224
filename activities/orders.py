"""The order's activities: recording it (and telling the customer's
workflow), its cancellation, delivery and feedback, in PostgreSQL (store/)."""

from __future__ import annotations

from datetime import datetime, timezone

import asyncpg
from temporalio import activity
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes

from store import customers as customer_store
from store import orders as order_store
from workflows import search_attributes as sa
from workflows.models import (
    CUSTOMER_WORKFLOW_TYPE,
    CancelRecord,
    CustomerState,
    DeliveryRecord,
    PickupMissedRecord,
    FeedbackRecord,
    JourneySettings,
    LifecycleSettings,
    OrderFacts,
    OrderInput,
    OrderNews,
    OrderSetup,
    customer_workflow_id,
)


class OrderActivities:
    def __init__(
        self, pool: asyncpg.Pool, settings: JourneySettings, client: Client, lifecycle: LifecycleSettings
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._client = client
        self._lifecycle = lifecycle

    @activity.defn
    async def record_order(self, order: OrderInput, first_run_id: str | None = None) -> OrderSetup:
        """Upsert the customer, store the order and the consent given at its
        checkout once, tell the customer's workflow, and hand the order's
        workflow the journey settings it keeps for its lifetime. Consent is
        not handed over: it is read at each send.

        `first_run_id`: the order's first run, which records it; a run of an
        order another run recorded changes nothing and is told so
        (`recorded_by`). None: scheduled before workflows passed it, stored
        as orders recorded before run ids were kept."""
        c = order.customer
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                recorded_by = await order_store.store_order(conn, order, first_run_id)
            if recorded_by:
                activity.logger.warning("order already recorded by %s: this run changes nothing", recorded_by)
                return OrderSetup(settings=self._settings, recorded_by=recorded_by)
            customer = await customer_store.starting_state(conn, c.customer_id, self._lifecycle, datetime.now(timezone.utc))
        await self._tell_customer(order, customer)
        return OrderSetup(settings=self._settings, stores_delivery=True, records_pickup_missed=True)

    async def _tell_customer(self, order: OrderInput, starting: CustomerState) -> None:
        """Signal-with-start: one billable action, whether or not the
        customer's workflow runs already. A retry signals again; the
        workflow ignores news of an order it knows."""
        c = order.customer
        news = OrderNews(
            event="placed",
            order=OrderFacts(order_id=order.order_id, placed_at=order.placed_at, total=order.total),
            coupon_code=order.coupon_code,
            timezone=c.timezone,
            has_phone=c.phone is not None,
        )
        await self._client.start_workflow(
            CUSTOMER_WORKFLOW_TYPE,
            starting.starting_input(),
            id=customer_workflow_id(c.customer_id),
            task_queue=activity.info().task_queue,
            start_signal="order_news",
            start_signal_args=[news],
            search_attributes=TypedSearchAttributes(
                [SearchAttributePair(sa.CUSTOMER_ID, c.customer_id), SearchAttributePair(sa.CUSTOMER_PHASE, starting.phase.value)]
            ),
            static_summary=f"Customer {c.customer_id}",
        )

    @activity.defn
    async def cancel_order(self, record: CancelRecord) -> None:
        await order_store.cancel_order(self._pool, record)

    @activity.defn
    async def record_delivery(self, record: DeliveryRecord) -> None:
        await order_store.record_delivery(self._pool, record)

    @activity.defn
    async def record_pickup_missed(self, record: PickupMissedRecord) -> None:
        await order_store.record_pickup_missed(self._pool, record)

    @activity.defn
    async def store_feedback(self, record: FeedbackRecord) -> None:
        await order_store.store_feedback(self._pool, record)
