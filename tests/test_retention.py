"""Retention (store/retention.py, workflows/retention.py): each table's rule
removes or blanks exactly what is past its cut-off, in batches, under one
lock; a dry run changes nothing and counts the same; a blanked ledger row
still keeps its key from being sent twice, and is never resent. Each test
has a database of its own: the rules reach every row of a table."""

from __future__ import annotations

import dataclasses

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import pytest
from temporalio.exceptions import ApplicationError

from store import retention
from store.database import create_pool
from store.retention import RETENTION_LOCK_ID, RetentionBusy, RetentionConfigError, policy_from_env
from tests.conftest import TEST_ERASURE_SALT
from tests.wocas_fixture import private_database
from workflows.models import RetentionTable

REPO = Path(__file__).resolve().parents[1]
NOW = datetime.now(timezone.utc)


def days_ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[tuple[str, asyncpg.Pool]]:
    async with private_database(database_url) as url:
        pool = await create_pool(url, erasure_salt=TEST_ERASURE_SALT)
        try:
            yield url, pool
        finally:
            await pool.close()


LEDGER_ROW = """
INSERT INTO message_ledger (key, order_id, kind, channel, recipient, state, subject, body_text, body_html, headers,
                            created_at, updated_at)
VALUES ($1, 'o1', 'order_confirmation', 'email', 'ada@example.com', $2, 'Your order', 'Hello Ada', '<p>Hello Ada</p>',
        '{"List-Unsubscribe": "<https://shop.example/u>"}', $3, $3)
"""
EVENT_ROW = """
INSERT INTO provider_events (provider, event_id, event, received_at, signal, signalled_at)
VALUES ('sendgrid', $1, 'delivered', $2, $3::jsonb, $4)
"""


async def seed(pool: asyncpg.Pool) -> None:
    """Rows each side of every default cut-off, and rows no rule may touch however old."""
    for key, state, age in [
        ("old-sent", "sent", 91), ("old-failed", "failed", 100), ("old-in-doubt", "in_doubt", 120),
        ("old-not-permitted", "not_permitted", 95), ("old-skipped", "skipped", 95),
        ("old-pending", "pending", 200), ("old-sending", "sending", 200),  # in flight: never blanked
        ("new-sent", "sent", 89),
    ]:
        await pool.execute(LEDGER_ROW, key, state, days_ago(age))
    signal = '{"kind": "order_confirmation"}'
    for event_id, age, owed, signalled in [
        ("old-plain", 181, None, None), ("old-signalled", 200, signal, days_ago(199)),
        ("old-owed", 200, signal, None),  # still owed its signal: kept
        ("new-plain", 179, None, None),
    ]:
        await pool.execute(EVENT_ROW, event_id, days_ago(age), owed, signalled)
    for key, age in [("old-outbox", 31), ("new-outbox", 29)]:
        await pool.execute(
            "INSERT INTO outbox (ledger_key, channel, recipient, body, created_at) VALUES ($1, 'email', 'ada@example.com', 'Hi', $2)",
            key, days_ago(age),
        )
    for sid, age in [("SMold", 31), ("SMnew", 29)]:
        await pool.execute("INSERT INTO sms_keywords_seen (message_sid, received_at) VALUES ($1, $2)", sid, days_ago(age))


async def apply_defaults(pool: asyncpg.Pool, batch_size: int = 1000) -> dict[RetentionTable, int]:
    policy = policy_from_env({})
    return {r.table: await retention.apply(pool, r.table, NOW - r.keep, batch_size) for r in policy.rules}


async def test_each_rule_removes_or_blanks_exactly_what_is_past_its_cutoff(db) -> None:
    _, pool = db
    await seed(pool)
    counts = await apply_defaults(pool)
    assert counts == {
        RetentionTable.LEDGER_RENDERINGS: 5, RetentionTable.PROVIDER_EVENTS: 2, RetentionTable.OUTBOX: 1,
        RetentionTable.SMS_KEYWORDS: 1,
    }
    ledger = {r["key"]: r for r in await pool.fetch("SELECT * FROM message_ledger")}
    blanked = {k for k, r in ledger.items() if r["blanked_at"] is not None}
    assert blanked == {"old-sent", "old-failed", "old-in-doubt", "old-not-permitted", "old-skipped"}
    for key in blanked:  # the row stays, its state and key with it; nothing of the message
        row = ledger[key]
        assert row["recipient"] is row["subject"] is row["body_text"] is row["body_html"] is row["headers"] is None
        assert row["state"] and row["kind"] == "order_confirmation" and row["updated_at"] < days_ago(90)
    for key in ledger.keys() - blanked:
        assert ledger[key]["body_text"] == "Hello Ada" and ledger[key]["recipient"] == "ada@example.com"
    assert {r["event_id"] for r in await pool.fetch("SELECT event_id FROM provider_events")} == {"old-owed", "new-plain"}
    assert [r["ledger_key"] for r in await pool.fetch("SELECT ledger_key FROM outbox")] == ["new-outbox"]
    assert [r["message_sid"] for r in await pool.fetch("SELECT message_sid FROM sms_keywords_seen")] == ["SMnew"]
    # Once applied, a second run finds nothing more.
    assert set((await apply_defaults(pool)).values()) == {0}


async def test_rows_go_in_batches_of_the_set_size(db) -> None:
    _, pool = db
    for n in range(5):
        await pool.execute("INSERT INTO sms_keywords_seen (message_sid, received_at) VALUES ($1, $2)", f"SM{n}", days_ago(40 + n))
    heard: list[int] = []
    assert await retention.apply(pool, RetentionTable.SMS_KEYWORDS, days_ago(30), 2, heard.append) == 5
    assert heard == [2, 4, 5]


async def test_a_dry_run_changes_nothing_and_counts_what_a_run_then_does(db) -> None:
    url, pool = db
    await seed(pool)
    before = await pool.fetch("SELECT * FROM message_ledger ORDER BY key")
    policy = policy_from_env({})
    counted = {r.table: await retention.due(pool, r.table, NOW - r.keep) for r in policy.rules}
    assert await pool.fetch("SELECT * FROM message_ledger ORDER BY key") == before
    shown = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "starter.cli", "retention", "--dry-run"], cwd=REPO,
        env={**os.environ, "DATABASE_URL": url}, capture_output=True, text=True, timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert "ledger_renderings" in shown.stdout and "would blank 5" in shown.stdout and "would delete 2" in shown.stdout
    assert "ada@example.com" not in shown.stdout + shown.stderr
    assert await pool.fetch("SELECT * FROM message_ledger ORDER BY key") == before
    assert await apply_defaults(pool) == counted


async def test_a_second_run_waits_for_the_one_holding_the_lock(db) -> None:
    _, pool = db
    await seed(pool)
    async with pool.acquire() as other:
        await other.execute("SELECT pg_advisory_lock($1)", RETENTION_LOCK_ID)
        try:
            with pytest.raises(RetentionBusy):
                await retention.apply(pool, RetentionTable.OUTBOX, days_ago(30), 1000)
        finally:
            await other.execute("SELECT pg_advisory_unlock($1)", RETENTION_LOCK_ID)
    assert await retention.apply(pool, RetentionTable.OUTBOX, days_ago(30), 1000) == 1
    # ...and a run leaves no lock behind on its pooled connection.
    async with pool.acquire() as conn:
        assert not await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")


async def test_a_batch_skips_rows_a_send_holds(db) -> None:
    _, pool = db
    await seed(pool)
    async with pool.acquire() as send, send.transaction():
        await send.execute("SELECT 1 FROM message_ledger WHERE key = 'old-sent' FOR UPDATE")
        blanked = await asyncio.wait_for(retention.apply(pool, RetentionTable.LEDGER_RENDERINGS, days_ago(90), 1000), 5)
    assert blanked == 4
    assert await pool.fetchval("SELECT body_text FROM message_ledger WHERE key = 'old-sent'") == "Hello Ada"


def test_the_policy_has_documented_defaults_and_a_wrong_setting_says_what_is_wrong() -> None:
    defaults = policy_from_env({})
    assert {r.table: r.keep.days for r in defaults.rules} == {
        RetentionTable.LEDGER_RENDERINGS: 90, RetentionTable.PROVIDER_EVENTS: 180, RetentionTable.OUTBOX: 30,
        RetentionTable.SMS_KEYWORDS: 30,
    }
    assert defaults.batch_size == 1000
    chosen = policy_from_env({"RETENTION_OUTBOX": "never", "RETENTION_PROVIDER_EVENTS": "365d", "RETENTION_BATCH_SIZE": "500"})
    assert {r.table: r.keep.days for r in chosen.rules}[RetentionTable.PROVIDER_EVENTS] == 365
    assert RetentionTable.OUTBOX not in {r.table for r in chosen.rules} and chosen.batch_size == 500
    with pytest.raises(RetentionConfigError, match="RETENTION_OUTBOX='a month' is neither a duration"):
        policy_from_env({"RETENTION_OUTBOX": "a month"})
    with pytest.raises(RetentionConfigError, match="kept at least a day"):
        policy_from_env({"RETENTION_LEDGER_RENDERINGS": "2h"})
    with pytest.raises(RetentionConfigError, match="RETENTION_BATCH_SIZE='0'"):
        policy_from_env({"RETENTION_BATCH_SIZE": "0"})


# --- the ledger after its renderings are blanked ------------------------------------


async def blanked(pool: asyncpg.Pool, provider_config, state: str):
    """A message sent, left in `state`, then past the ledger's cut-off and blanked."""
    from activities.messaging import MessagingActivities
    from tests.test_exactly_once import attempt, recorded_order, request_for

    order = await recorded_order(pool)
    request = request_for(order)
    messaging = MessagingActivities(pool, provider_config)
    assert (await attempt().run(messaging.send_message, request)).state.value == "sent"
    await pool.execute(
        "UPDATE message_ledger SET state = $2, updated_at = now() - interval '91 days' WHERE key = $1", request.key, state
    )
    assert await retention.apply(pool, RetentionTable.LEDGER_RENDERINGS, days_ago(90), 1000) == 1
    return order, request, messaging


async def test_a_blanked_ledger_row_still_keeps_its_key_from_being_sent_twice(db, fakes, provider_config) -> None:
    from tests.test_exactly_once import attempt, requests_to

    _, pool = db
    order, request, messaging = await blanked(pool, provider_config, "sent")
    email = order["customer"]["email"]
    assert len(requests_to(fakes, email)) == 1
    for number in (1, 2):  # a late first attempt (a replayed schedule) and a retry
        outcome = await attempt(number).run(messaging.send_message, request)
        assert outcome.state.value == "sent"
    assert len(requests_to(fakes, email)) == 1
    row = await pool.fetchrow("SELECT state, recipient, body_text, blanked_at FROM message_ledger WHERE key = $1", request.key)
    assert row["state"] == "sent" and row["recipient"] is row["body_text"] is None and row["blanked_at"]


async def test_a_blanked_message_is_not_resent_and_says_why(db, fakes, provider_config) -> None:
    from starter.operator import MESSAGE, why_not_resent
    from tests.test_exactly_once import attempt, requests_to
    from workflows.models import SendMode

    _, pool = db
    order, request, messaging = await blanked(pool, provider_config, "failed")
    refusal = why_not_resent(request.key, await pool.fetchrow(MESSAGE, request.key))
    assert refusal and "removed" in refusal and "retention" in refusal and "RETENTION_LEDGER_RENDERINGS" in refusal
    # Should the rendering go between that check and the worker's attempt: refused there too, for good.
    with pytest.raises(ApplicationError) as refused:
        await attempt().run(messaging.send_message, request.model_copy(update={"mode": SendMode.RESEND}))
    assert refused.value.type == "RenderingRemoved" and refused.value.non_retryable
    assert len(requests_to(fakes, order["customer"]["email"])) == 1
    assert await pool.fetchval("SELECT state FROM message_ledger WHERE key = $1", request.key) == "failed"


async def test_a_late_bounce_of_a_blanked_message_is_recorded(db, provider_config) -> None:
    from store import provider_events

    _, pool = db
    _, request, _ = await blanked(pool, provider_config, "sent")
    bounce = provider_events.from_sendgrid(
        event_id="late-bounce", event="bounce", occurred_at=NOW, message_key=request.key, sg_message_id=None,
        bounce_type="bounce", reason="550 no such user",
    )
    async with pool.acquire() as conn, conn.transaction():
        await provider_events.record(conn, bounce)
    assert await pool.fetchval("SELECT delivery FROM message_ledger WHERE key = $1", request.key) == "bounced"
    assert await pool.fetchval("SELECT count(*) FROM provider_events WHERE event_id = 'late-bounce'") == 1


async def test_a_blanked_refusal_sent_later_is_kept_and_blanked_again_in_its_time(db, fakes, provider_config) -> None:
    """A 'not_permitted' row is registered anew when the message may go now:
    its new rendering is the one kept, and retention blanks it once it is old."""
    from tests.test_exactly_once import attempt, requests_to

    from activities.messaging import MessagingActivities

    _, pool = db
    # Its first rendering went to the outbox: the fake providers see one send of the key.
    order, request, _ = await blanked(pool, dataclasses.replace(provider_config, sendgrid_api_key=None), "not_permitted")
    messaging = MessagingActivities(pool, provider_config)
    assert (await attempt().run(messaging.send_message, request)).state.value == "sent"
    assert len(requests_to(fakes, order["customer"]["email"])) == 1
    row = await pool.fetchrow("SELECT recipient, body_text, blanked_at FROM message_ledger WHERE key = $1", request.key)
    assert row["recipient"] == order["customer"]["email"] and row["body_text"] and row["blanked_at"] is None
    await pool.execute("UPDATE message_ledger SET updated_at = now() - interval '91 days' WHERE key = $1", request.key)
    assert await retention.apply(pool, RetentionTable.LEDGER_RENDERINGS, days_ago(90), 1000) == 1


# --- on its schedule, on the dev server ------------------------------------------------


async def test_the_worker_keeps_the_retention_schedule_and_a_triggered_run_applies_the_policy(dev_env, database_url: str) -> None:
    from temporalio.client import ScheduleActionStartWorkflow, ScheduleOverlapPolicy
    from temporalio.service import RPCError

    from reports.schedule import RETENTION_SCHEDULE_ID, SCHEDULE_ID, ensure_schedule, retention_schedule_from_env, trigger_schedule
    from tests.conftest import HISTORIES, TEST_KEY_ENV
    from tests.test_wocas_schedule import _run_of, made_by
    from worker import run_worker
    from workflows.models import RetentionOutcome

    async with private_database(database_url) as url:
        pool = await create_pool(url, erasure_salt=TEST_ERASURE_SALT)
        await seed(pool)
        env = {**TEST_KEY_ENV, "DATABASE_URL": url, "RETENTION_SMS_KEYWORDS": "never", "RETENTION_BATCH_SIZE": "2"}
        schedule = dev_env.client.get_schedule_handle(RETENTION_SCHEDULE_ID)
        with contextlib.suppress(RPCError):  # one another test's worker made: this worker's is the one described
            await schedule.delete()
        stop = asyncio.Event()
        worker = asyncio.create_task(run_worker(dev_env.client, url, env, stop))
        try:
            described = await made_by(worker, schedule)
            assert described.schedule.policy.overlap == ScheduleOverlapPolicy.BUFFER_ONE
            action = described.schedule.action
            assert isinstance(action, ScheduleActionStartWorkflow) and action.workflow == "RetentionRun"
            [calendar] = described.schedule.spec.calendars  # daily at 03:15 UTC
            assert [r.start for r in calendar.hour] == [3] and [r.start for r in calendar.minute] == [15]

            await trigger_schedule(dev_env.client, RETENTION_SCHEDULE_ID)
            run = dev_env.client.get_workflow_handle(await _run_of(schedule, 0), result_type=RetentionOutcome)
            outcome = await asyncio.wait_for(run.result(), 60)
            if os.environ.get("RECORD_HISTORIES") == "1":  # for tests/test_replay.py
                (HISTORIES / "retention_run.json").write_text((await run.fetch_history()).to_json())
            assert {c.table: c.rows for c in outcome.counts} == {
                RetentionTable.LEDGER_RENDERINGS: 5, RetentionTable.PROVIDER_EVENTS: 2, RetentionTable.OUTBOX: 1,
            }
            assert await pool.fetchval("SELECT count(*) FROM message_ledger WHERE blanked_at IS NOT NULL") == 5
            assert await pool.fetchval("SELECT count(*) FROM sms_keywords_seen") == 2  # RETENTION_SMS_KEYWORDS=never

            # The same configuration leaves the schedule be; another one updates it.
            updated_at = (await schedule.describe()).info.last_updated_at
            await ensure_schedule(dev_env.client, retention_schedule_from_env(env))
            assert (await schedule.describe()).info.last_updated_at == updated_at
            await ensure_schedule(dev_env.client, retention_schedule_from_env({"RETENTION_SCHEDULE": "12h"}))
            assert (await schedule.describe()).schedule.spec.intervals[0].every == timedelta(hours=12)
        finally:
            stop.set()
            await asyncio.wait_for(worker, 60)
            await pool.close()
            for made in (RETENTION_SCHEDULE_ID, SCHEDULE_ID):
                await dev_env.client.get_schedule_handle(made).delete()
