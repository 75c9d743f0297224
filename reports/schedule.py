"""The WOCAS report's Temporal Schedule: created, or brought in line with the
configuration, whenever a worker starts (and so by `orders up`); triggered
by `orders report wocas --mail`, so the on-demand run is the weekly one.

- WOCAS_SCHEDULE: a cron expression in UTC (default `0 6 * * 1`, Mondays at
  06:00) or an interval (`7d`, `24h`);
- WOCAS_PERIOD_DAYS: the days each run reports on, before 00:00 UTC of its
  day (default 7).

Never two runs at once: a run due while one is running waits for it, and
only one waits (BUFFER_ONE). After an outage, runs missed within the last day
are made up; older ones are not (the catch-up window), so a long outage is
followed by one run, not a flood. A run that has not finished in a day is
ended, so it never holds the next week's back.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
)

from reports.config import ReportConfigError
from workflows.clock import parse_duration
from workflows.models import TASK_QUEUE, WOCAS_WORKFLOW_TYPE, WocasRequest

SCHEDULE_ID = "wocas-report"
DEFAULT_SCHEDULE = "0 6 * * 1"
DEFAULT_PERIOD_DAYS = 7
OVERLAP = ScheduleOverlapPolicy.BUFFER_ONE
CATCHUP_WINDOW = timedelta(days=1)
RUN_TIMEOUT = timedelta(days=1)
_CRON = re.compile(r"^(@\w+|\S+( \S+){4})$")


@dataclass(frozen=True)
class WocasSchedule:
    when: str  # as configured: a cron expression or an interval
    period_days: int

    @property
    def summary(self) -> str:
        """Shown in the Web UI, and how a worker tells the schedule is already as configured."""
        return f"WOCAS report at {self.when} (UTC): the {self.period_days} days before each run's day"

    def schedule(self, task_queue: str = TASK_QUEUE) -> Schedule:
        if _CRON.match(self.when):
            spec = ScheduleSpec(cron_expressions=[self.when])
        else:
            spec = ScheduleSpec(intervals=[ScheduleIntervalSpec(every=parse_duration(self.when))])
        return Schedule(
            action=ScheduleActionStartWorkflow(
                WOCAS_WORKFLOW_TYPE,
                WocasRequest(period_days=self.period_days),
                id=SCHEDULE_ID,  # each run's id: this plus the time it is scheduled for
                task_queue=task_queue,
                execution_timeout=RUN_TIMEOUT,
                static_summary=self.summary,
            ),
            spec=spec,
            policy=SchedulePolicy(overlap=OVERLAP, catchup_window=CATCHUP_WINDOW),
        )


def schedule_from_env(env: Mapping[str, str]) -> WocasSchedule:
    when = " ".join((env.get("WOCAS_SCHEDULE") or DEFAULT_SCHEDULE).split())
    if not _CRON.match(when):
        try:
            every = parse_duration(when)
        except ValueError:
            raise ReportConfigError(
                f"WOCAS_SCHEDULE={when!r} is neither a cron expression (five fields, e.g. '0 6 * * 1') nor an interval (e.g. 7d)"
            ) from None
        if every < timedelta(hours=1):
            raise ReportConfigError(f"WOCAS_SCHEDULE={when!r}: the report runs at most hourly")
    raw_days = env.get("WOCAS_PERIOD_DAYS") or str(DEFAULT_PERIOD_DAYS)
    if not raw_days.strip().isdigit() or not 1 <= int(raw_days) <= 366:
        raise ReportConfigError(f"WOCAS_PERIOD_DAYS={raw_days!r} is not a whole number of days from 1 to 366")
    return WocasSchedule(when=when, period_days=int(raw_days))


async def ensure_schedule(client: Client, wanted: WocasSchedule, task_queue: str = TASK_QUEUE) -> None:
    """Creates the schedule, or updates it when the configuration changed;
    an unchanged one is left alone, paused or not."""
    schedule = wanted.schedule(task_queue)
    try:
        await client.create_schedule(SCHEDULE_ID, schedule)
        return
    except ScheduleAlreadyRunningError:
        pass

    async def update(current: ScheduleUpdateInput) -> ScheduleUpdate | None:
        now = current.description.schedule
        action = now.action
        if (
            isinstance(action, ScheduleActionStartWorkflow)
            and action.task_queue == task_queue
            and now.policy.overlap == OVERLAP
            and now.policy.catchup_window == CATCHUP_WINDOW
            and await _summary(client, action) == wanted.summary
        ):
            return None
        schedule.state = now.state  # an operator's pause stays
        return ScheduleUpdate(schedule=schedule)

    await client.get_schedule_handle(SCHEDULE_ID).update(update)


async def _summary(client: Client, action: ScheduleActionStartWorkflow) -> str | None:
    if action.static_summary is None or isinstance(action.static_summary, str):
        return action.static_summary
    [text] = await client.data_converter.decode([action.static_summary], [str])
    return text


async def trigger_schedule(client: Client) -> None:
    """A run now, as the schedule's own (a run in progress first finishes)."""
    await client.get_schedule_handle(SCHEDULE_ID).trigger()
