"""The failure drills of `python -m bench chaos`, small enough for CI (named
to run after the time-skipping tests, which share one test server): orders
in flight while the worker is killed, the providers misbehave, PostgreSQL
goes away for 30 s and the Temporal server restarts. Every order completes;
no message is sent twice; none is lost without being flagged."""

from __future__ import annotations

import pytest

from bench.chaos import DRILLS, run_drill


@pytest.mark.parametrize("drill", DRILLS)
async def test_drill(drill: str):
    report = await run_drill(drill, orders=60 if drill == "kill-worker" else 30, concurrency=30)
    if drill == "kill-worker":
        assert report.notes, "the worker was never killed while orders were in flight"
    assert report.completed == report.orders, report.errors
    assert report.duplicates == 0
    assert report.lost == 0, report
    assert report.messages_delivered >= report.messages_expected - report.in_doubt_not_delivered
    if drill == "provider-faults":
        assert report.fell_back_to_other_channel == report.failed_permanently > 0
        assert {"429", "500", "502", "503"} <= set(report.provider_answers)
