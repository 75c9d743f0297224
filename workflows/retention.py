"""RetentionRun: one run of the retention policy (store/retention.py),
started by its Temporal Schedule (reports/schedule.py) daily or on demand
(`orders retention`).

The cut-offs are taken from the moment the schedule meant the run for (the
search attribute TemporalScheduledStartTime; the start time when started by
hand), so a retried activity removes up to the same moment. One activity per
rule, one after the other: each works in batches and heartbeats, and the
run's result is what each removed or blanked (counts, no row's content).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.retention import RetentionActivities
    from workflows.models import RETENTION_WORKFLOW_TYPE, RetentionOutcome, RetentionRequest, RetentionStep
    from workflows.wocas_report import SCHEDULED_START_TIME

# A first run over a year of history works through millions of rows; a dead
# worker is noticed by its missing heartbeat, and the next attempt goes on
# from what is left. Retried like every database activity (workflows/retries.py),
# and while another run holds the lock.
RULE_TIMEOUTS = dict(
    start_to_close_timeout=timedelta(hours=6),
    heartbeat_timeout=timedelta(minutes=2),
    retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=10)),
)


@workflow.defn(name=RETENTION_WORKFLOW_TYPE)
class RetentionRun:
    @workflow.run
    async def run(self, request: RetentionRequest) -> RetentionOutcome:
        scheduled = workflow.info().typed_search_attributes.get(SCHEDULED_START_TIME) or workflow.info().start_time
        counts = []
        for rule in request.rules:
            step = RetentionStep(table=rule.table, cutoff=scheduled - rule.keep, batch_size=request.batch_size)
            counts.append(await workflow.execute_activity_method(RetentionActivities.apply_retention, step, **RULE_TIMEOUTS))
        return RetentionOutcome(counts=counts)
