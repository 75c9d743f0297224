"""WocasReport: one run of the WOCAS report, started by its Temporal Schedule
(reports/schedule.py) weekly or on demand (`orders report wocas --mail`).

The period ends at 00:00 UTC of the day the schedule meant the run for (the
search attribute TemporalScheduledStartTime the schedule sets; the start time
when started by hand), so a retry or a late run reports the same days. One
activity builds the report and writes its folder; one per lead mails that
lead their sections, keyed by (period, lead) in the ledger, so a second run of
the same period mails nobody twice. Only the period, the folder's path and
the leads cross history, never the report's bytes.
"""

from __future__ import annotations

import asyncio

from temporalio import workflow
from temporalio.common import SearchAttributeKey
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.wocas import WocasActivities
    from workflows.models import WOCAS_WORKFLOW_TYPE, WocasMail, WocasOutcome, WocasPeriod, WocasRequest
    from workflows.retries import DB_TIMEOUTS, SEND_RETRY, SEND_TIMEOUTS

SCHEDULED_START_TIME = SearchAttributeKey.for_datetime("TemporalScheduledStartTime")


@workflow.defn(name=WOCAS_WORKFLOW_TYPE)
class WocasReport:
    @workflow.run
    async def run(self, request: WocasRequest) -> WocasOutcome:
        scheduled = workflow.info().typed_search_attributes.get(SCHEDULED_START_TIME) or workflow.info().start_time
        period = WocasPeriod.ending_on_the_day_of(scheduled, request.period_days)
        built = await workflow.execute_activity_method(WocasActivities.build_wocas_report, period, **DB_TIMEOUTS)
        # Each lead on their own: one refused address keeps nobody else's mail back.
        sent = await asyncio.gather(
            *(
                workflow.execute_activity_method(
                    WocasActivities.mail_wocas_report, WocasMail(period=period, lead=lead), retry_policy=SEND_RETRY, **SEND_TIMEOUTS
                )
                for lead in built.leads
            ),
            return_exceptions=True,
        )
        for lead, result in zip(built.leads, sent):
            if isinstance(result, BaseException):
                if not isinstance(result, ActivityError):
                    raise result
                workflow.logger.warning("the WOCAS report for %s could not be mailed (see the ledger)", lead.name)
        return WocasOutcome(
            period=period,
            folder=built.folder,
            mailed=[r for r in sent if isinstance(r, str)],
            not_mailed=[lead.name for lead, r in zip(built.leads, sent) if not isinstance(r, str)],
        )
