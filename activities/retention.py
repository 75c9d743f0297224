"""The retention schedule's activity (workflows/retention.py): one rule
applied in batches (store/retention.py), heartbeating the rows done so far,
so that a retry after a worker died reports the run's whole count."""

from __future__ import annotations

import logging
from datetime import timedelta

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from store import retention
from workflows.models import RetentionCount, RetentionStep

log = logging.getLogger(__name__)

# Another run holds the lock: tried again this much later.
BUSY_RETRY = timedelta(minutes=1)


class RetentionActivities:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @activity.defn
    async def apply_retention(self, step: RetentionStep) -> RetentionCount:
        details = activity.info().heartbeat_details
        before = int(details[0]) if details else 0
        try:
            rows = await retention.apply(
                self._pool, step.table, step.cutoff, step.batch_size, lambda done: activity.heartbeat(before + done)
            )
        except retention.RetentionBusy as busy:
            raise ApplicationError(str(busy), type="RetentionBusy", next_retry_delay=BUSY_RETRY) from None
        log.info("retention %s: %d rows before %s", step.table.value, before + rows, step.cutoff.isoformat())
        return RetentionCount(table=step.table, cutoff=step.cutoff, rows=before + rows)
