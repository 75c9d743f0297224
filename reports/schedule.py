"""The worker's Temporal Schedules, each created, or brought in line with the
configuration, whenever a worker starts (and so by `orders up`).

The WOCAS report's, triggered by `orders report wocas --mail`, so the
on-demand run is the weekly one:

- WOCAS_SCHEDULE: a cron expression in UTC (default `0 6 * * 1`, Mondays at
  06:00) or an interval (`7d`, `24h`);
- WOCAS_PERIOD_DAYS: the days each run reports on, before 00:00 UTC of its
  day (default 7).

Never two runs at once: a run due while one is running waits for it, and
only one waits (BUFFER_ONE). After an outage, runs missed within the last day
are made up; older ones are not (the catch-up window), so a long outage is
followed by one run, not a flood. A run that has not finished in a day is
ended, so it never holds the next week's back.

Retention's (workflows/retention.py, store/retention.py), triggered by
`orders retention`: RETENTION_SCHEDULE, a cron expression in UTC (default
`15 3 * * *`, daily at 03:15) or an interval; its runs carry the policy
(RETENTION_*) as the worker last set it. The same overlap, catch-up and
run-timeout policies.
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
from store.retention import policy_from_env
from workflows.clock import parse_duration
from workflows.models import RETENTION_WORKFLOW_TYPE, TASK_QUEUE, WOCAS_WORKFLOW_TYPE, RetentionRequest, WocasRequest

SCHEDULE_ID = "wocas-report"
DEFAULT_SCHEDULE = "0 6 * * 1"
RETENTION_SCHEDULE_ID = "retention"
DEFAULT_RETENTION_SCHEDULE = "15 3 * * *"
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

    schedule_id = SCHEDULE_ID

    def schedule(self, task_queue: str = TASK_QUEUE) -> Schedule:
        return _schedule(self, WOCAS_WORKFLOW_TYPE, WocasRequest(period_days=self.period_days), task_queue)


@dataclass(frozen=True)
class RetentionSchedule:
    when: str  # as configured: a cron expression or an interval
    policy: RetentionRequest

    schedule_id = RETENTION_SCHEDULE_ID

    @property
    def summary(self) -> str:
        """Shown in the Web UI, and how a worker tells the schedule is already as configured."""
        rules = ", ".join(f"{r.table.value} after {r.keep.days}d" for r in self.policy.rules) or "no rule"
        return f"Retention at {self.when} (UTC): {rules}; batches of {self.policy.batch_size}"

    def schedule(self, task_queue: str = TASK_QUEUE) -> Schedule:
        return _schedule(self, RETENTION_WORKFLOW_TYPE, self.policy, task_queue)


def _schedule(wanted: WocasSchedule | RetentionSchedule, workflow: str, request: object, task_queue: str) -> Schedule:
    if _CRON.match(wanted.when):
        spec = ScheduleSpec(cron_expressions=[wanted.when])
    else:
        spec = ScheduleSpec(intervals=[ScheduleIntervalSpec(every=parse_duration(wanted.when))])
    return Schedule(
        action=ScheduleActionStartWorkflow(
            workflow,
            request,
            id=wanted.schedule_id,  # each run's id: this plus the time it is scheduled for
            task_queue=task_queue,
            execution_timeout=RUN_TIMEOUT,
            static_summary=wanted.summary,
        ),
        spec=spec,
        policy=SchedulePolicy(overlap=OVERLAP, catchup_window=CATCHUP_WINDOW),
    )


def _when_from_env(env: Mapping[str, str], setting: str, default: str, example: str) -> str:
    when = " ".join((env.get(setting) or default).split())
    if not _CRON.match(when):
        try:
            every = parse_duration(when)
        except ValueError:
            raise ReportConfigError(
                f"{setting}={when!r} is neither a cron expression (five fields, e.g. '{default}') nor an interval (e.g. {example})"
            ) from None
        if every < timedelta(hours=1):
            raise ReportConfigError(f"{setting}={when!r}: the schedule runs at most hourly")
    return when


def retention_schedule_from_env(env: Mapping[str, str]) -> RetentionSchedule:
    """RETENTION_SCHEDULE and the policy; raises ReportConfigError or RetentionConfigError."""
    return RetentionSchedule(when=_when_from_env(env, "RETENTION_SCHEDULE", DEFAULT_RETENTION_SCHEDULE, "24h"),
                             policy=policy_from_env(env))


def schedule_from_env(env: Mapping[str, str]) -> WocasSchedule:
    when = _when_from_env(env, "WOCAS_SCHEDULE", DEFAULT_SCHEDULE, "7d")
    raw_days = env.get("WOCAS_PERIOD_DAYS") or str(DEFAULT_PERIOD_DAYS)
    if not raw_days.strip().isdigit() or not 1 <= int(raw_days) <= 366:
        raise ReportConfigError(f"WOCAS_PERIOD_DAYS={raw_days!r} is not a whole number of days from 1 to 366")
    return WocasSchedule(when=when, period_days=int(raw_days))


async def ensure_schedule(client: Client, wanted: WocasSchedule | RetentionSchedule, task_queue: str = TASK_QUEUE) -> None:
    """Creates the schedule, or updates it when the configuration changed;
    an unchanged one is left alone, paused or not."""
    schedule = wanted.schedule(task_queue)
    try:
        await client.create_schedule(wanted.schedule_id, schedule)
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

    await client.get_schedule_handle(wanted.schedule_id).update(update)


async def _summary(client: Client, action: ScheduleActionStartWorkflow) -> str | None:
    if action.static_summary is None or isinstance(action.static_summary, str):
        return action.static_summary
    [text] = await client.data_converter.decode([action.static_summary], [str])
    return text


async def trigger_schedule(client: Client, schedule_id: str = SCHEDULE_ID) -> None:
    """A run now, as the schedule's own (a run in progress first finishes)."""
    await client.get_schedule_handle(schedule_id).trigger()
