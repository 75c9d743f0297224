"""The WOCAS report on its Temporal Schedule, on the dev server: the worker
creates the schedule (and brings it in line with its configuration), and a
triggered run mails each lead their sections once per period."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from temporalio.client import ScheduleActionStartWorkflow, ScheduleDescription, ScheduleHandle, ScheduleOverlapPolicy
from temporalio.service import RPCError

from reports.config import ReportConfigError
from reports.schedule import RETENTION_SCHEDULE_ID, SCHEDULE_ID, ensure_schedule, schedule_from_env, trigger_schedule
from tests.conftest import HISTORIES, TEST_KEY_ENV
from tests.fake_providers import FakeProviders
from tests.wocas_fixture import private_database
from worker import run_worker
from workflows.models import WocasOutcome

REPO = Path(__file__).resolve().parents[1]


def test_mail_on_demand_takes_no_period_of_its_own() -> None:
    refused = subprocess.run([sys.executable, "-m", "starter.cli", "report", "wocas", "--mail", "--until", "2026-03-02"],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "--mail runs the schedule's own report" in refused.stderr


def test_the_schedule_is_weekly_by_default_and_a_wrong_setting_says_what_is_wrong() -> None:
    assert schedule_from_env({}).when == "0 6 * * 1" and schedule_from_env({}).period_days == 7
    assert schedule_from_env({"WOCAS_SCHEDULE": "24h", "WOCAS_PERIOD_DAYS": "1"}).schedule().spec.intervals[0].every == timedelta(hours=24)
    with pytest.raises(ReportConfigError, match="neither a cron expression"):
        schedule_from_env({"WOCAS_SCHEDULE": "weekly"})
    with pytest.raises(ReportConfigError, match="WOCAS_PERIOD_DAYS='0' is not a whole number"):
        schedule_from_env({"WOCAS_PERIOD_DAYS": "0"})


async def orders_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "starter.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


async def _run_of(handle, runs_before: int, timeout: float = 60) -> str:
    """The workflow id of the schedule's next run (tests may poll)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        recent = (await handle.describe()).info.recent_actions
        if len(recent) > runs_before:
            return recent[-1].action.workflow_id
        assert asyncio.get_running_loop().time() < deadline, "the schedule started no run"
        await asyncio.sleep(0.1)


async def made_by(worker: asyncio.Task, schedule: ScheduleHandle) -> ScheduleDescription:
    """The schedule once the worker starting in `worker` has created it (tests may poll)."""
    for _ in range(300):
        try:
            return await schedule.describe()
        except RPCError:
            assert not worker.done(), worker
            await asyncio.sleep(0.1)
    raise AssertionError(f"the worker created no schedule {schedule.id!r}")


async def test_the_worker_keeps_the_schedule_and_a_triggered_run_mails_each_lead_once(
    dev_env, database_url: str, fakes: FakeProviders, provider_config, tmp_path: Path
) -> None:
    uid = uuid.uuid4().hex[:8]
    leads = [
        {"name": "Sam Sellers", "email": f"sam.{uid}@shop.example", "sections": ["sellers", "categories"]},
        {"name": "Cass Service", "email": f"cass.{uid}@shop.example", "sections": ["customer_service"]},
    ]
    async with private_database(database_url) as url:
        env = {
            **TEST_KEY_ENV,
            "DATABASE_URL": url,
            "SENDGRID_API_KEY": provider_config.sendgrid_api_key,
            "SENDGRID_API_HOST": provider_config.sendgrid_api_host,
            "SENDGRID_SETTLE_AFTER": "1s",
            "EMAIL_FROM": provider_config.email_from,
            "WEB_PUBLIC_URL": provider_config.web_public_url,
            "UNSUBSCRIBE_SECRET": provider_config.unsubscribe_secret,
            "WOCAS_LEADS": json.dumps(leads),
            "WOCAS_REPORT_DIR": str(tmp_path),
        }
        stop = asyncio.Event()
        worker = asyncio.create_task(run_worker(dev_env.client, url, env, stop))
        schedule = dev_env.client.get_schedule_handle(SCHEDULE_ID)
        try:
            described = await made_by(worker, schedule)
            assert described.schedule.policy.overlap == ScheduleOverlapPolicy.BUFFER_ONE
            assert described.schedule.policy.catchup_window == timedelta(days=1)
            action = described.schedule.action
            assert isinstance(action, ScheduleActionStartWorkflow) and action.workflow == "WocasReport"
            # Weekly: the server keeps the cron expression as a calendar, Mondays at 06:00.
            [calendar] = described.schedule.spec.calendars
            assert [r.start for r in calendar.day_of_week] == [1] and [r.start for r in calendar.hour] == [6]

            await trigger_schedule(dev_env.client)
            first = dev_env.client.get_workflow_handle(await _run_of(schedule, 0), result_type=WocasOutcome)
            outcome = await asyncio.wait_for(first.result(), 60)
            if os.environ.get("RECORD_HISTORIES") == "1":  # for tests/test_replay.py
                (HISTORIES / "wocas_report.json").write_text((await first.fetch_history()).to_json())
            assert len(outcome.mailed) == 2 and outcome.not_mailed == []
            assert outcome.period.end.hour == 0 and outcome.period.days == 7
            assert (Path(outcome.folder) / "index.html").exists()

            for lead in leads:
                [mail] = [r.json for r in fakes.requests if r.path == "/v3/mail/send"
                          and r.json["personalizations"][0]["to"][0]["email"] == lead["email"]]
                html = next(c["value"] for c in mail["content"] if c["type"] == "text/html")
                inline = [a for a in mail["attachments"] if a["disposition"] == "inline"]
                [csv] = [a for a in mail["attachments"] if a["disposition"] == "attachment"]
                assert inline and all(f'cid:{a["content_id"]}' in html and a["type"] == "image/png" for a in inline)
                assert all(base64.b64decode(a["content"]).startswith(b"\x89PNG") for a in inline)
                assert csv["filename"] == "figures.csv" and base64.b64decode(csv["content"]).startswith(b"section,subject,figure")
            assert "Customer service" in html and "Sellers" not in html.split("</style>")[1].split("Lifecycle metrics")[0]

            # The same period again, on demand as an operator asks for it: nobody is mailed twice.
            cli_env = {**os.environ, **TEST_KEY_ENV, "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host}
            asked = await orders_cli(cli_env, "report", "wocas", "--mail")
            assert asked.returncode == 0, asked.stderr
            assert "triggered schedule 'wocas-report'" in asked.stdout
            second = dev_env.client.get_workflow_handle(await _run_of(schedule, 1), result_type=WocasOutcome)
            again = await asyncio.wait_for(second.result(), 60)
            assert again.period == outcome.period and sorted(again.mailed) == sorted(outcome.mailed)
            for lead in leads:
                assert len([m for m in fakes.accepted if m.recipient == lead["email"]]) == 1

            # A worker started with another configuration updates the schedule; the same one leaves it be.
            updated_at = (await schedule.describe()).info.last_updated_at
            await ensure_schedule(dev_env.client, schedule_from_env(env))
            assert (await schedule.describe()).info.last_updated_at == updated_at
            await ensure_schedule(dev_env.client, schedule_from_env({"WOCAS_SCHEDULE": "24h", "WOCAS_PERIOD_DAYS": "1"}))
            changed = (await schedule.describe()).schedule
            assert changed.spec.intervals[0].every == timedelta(hours=24) and not changed.spec.calendars
        finally:
            stop.set()
            await asyncio.wait_for(worker, 60)
            for made in (SCHEDULE_ID, RETENTION_SCHEDULE_ID):  # the worker keeps both
                await dev_env.client.get_schedule_handle(made).delete()


async def test_without_a_provider_the_outbox_keeps_the_report_mail_naming_its_attachments(pool) -> None:
    from temporalio.testing import ActivityEnvironment

    from activities.staff_mail import StaffMailer
    from activities.wocas import WocasActivities
    from reports.config import Lead
    from reports.metrics import targets_from_env
    from workflows.models import WocasLead, WocasMail, WocasPeriod

    lead = Lead("Dana", f"dana.{uuid.uuid4().hex[:8]}@shop.example", ("delivery",))
    activities = WocasActivities(pool, StaffMailer(pool, None), [lead], targets_from_env({}), {})
    mail = WocasMail(period=WocasPeriod(end=datetime(2030, 1, 15, tzinfo=timezone.utc), days=7),
                     lead=WocasLead(name=lead.name, email=lead.email, sections=list(lead.sections)))
    first = await ActivityEnvironment().run(activities.mail_wocas_report, mail)
    assert await ActivityEnvironment().run(activities.mail_wocas_report, mail) == first  # once per period and lead
    [body] = await pool.fetch("SELECT body FROM outbox WHERE recipient = $1", lead.email)
    assert "figures.csv (text/csv" in body["body"] and "wocas-deadline_breaches.png (image/png" in body["body"]
