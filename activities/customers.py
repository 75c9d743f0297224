"""The customer's activities: coupons and phase changes, in PostgreSQL (store/customers.py)."""

from __future__ import annotations

import asyncpg
from temporalio import activity

from store import customers as customer_store
from workflows.models import Coupon, CouponRequest, PhaseChange


class CustomerActivities:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @activity.defn
    async def issue_coupon(self, request: CouponRequest) -> Coupon:
        """The milestone's coupon, created on the first call and returned as
        it is by every later one (retries, replays, a restarted workflow)."""
        async with self._pool.acquire() as conn:
            return await customer_store.issue_coupon(conn, request)

    @activity.defn
    async def record_phase(self, change: PhaseChange) -> None:
        """Idempotent: a retried change is the same row."""
        async with self._pool.acquire() as conn, conn.transaction():
            await customer_store.record_phase(conn, change)
